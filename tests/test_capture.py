"""helpers.capture: tracer warnings summarised, short errors, sizes, and loading each kind of program in a new process."""

import warnings

import pytest
import torch

from helpers import capture


class _Branchy(torch.nn.Module):
    def forward(self, x):
        if bool(x.sum() > 0):  # a Python bool from a tensor: the tracer warns here
            return x * 2
        return x


class _Doubler(torch.nn.Module):
    def forward(self, ids, mask):
        return (ids * mask).float() * 2


def _args():
    return torch.arange(6).reshape(2, 3), torch.ones(2, 3, dtype=torch.long)


def test_tracer_warnings_keeps_only_tracer_warnings_one_line_per_place():
    with capture.recorded_warnings() as caught:
        torch.jit.trace(_Branchy(), (torch.ones(2, 2),))
        warnings.warn("unrelated", UserWarning)
    lines = capture.tracer_warnings(caught)
    assert len(lines) == 1, lines  # traced and checked: the same place twice, counted once
    assert "test_capture.py:" in lines[0] and "Python boolean" in lines[0] and "(2 times)" in lines[0], lines
    assert not any("deprecated" in line or "unrelated" in line for line in lines)


def test_tracer_warnings_caps_the_lines():
    fake = [warnings.WarningMessage(torch.jit.TracerWarning(f"place {i}. more"), torch.jit.TracerWarning, f"f{i}.py", i)
            for i in range(9)]
    lines = capture.tracer_warnings(fake, limit=3)
    assert lines[:3] == ["f0.py:0: place 0", "f1.py:1: place 1", "f2.py:2: place 2"]
    assert lines[3] == "... and 6 more place(s)"


def test_short_error_takes_the_first_non_empty_line():
    assert capture.short_error(ValueError("\n\n  bad shape  \ndetails")) == "ValueError: bad shape"
    assert capture.short_error(RuntimeError("")) == "RuntimeError: (no message)"
    assert len(capture.short_error(ValueError("x" * 500), width=40)) == 40


def test_size_mib_of_a_file_and_a_folder(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\0" * 2**20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"\0" * 2**19)
    assert capture.size_mib(tmp_path / "a.bin") == 1.0
    assert capture.size_mib(tmp_path) == 1.5
    with pytest.raises(FileNotFoundError, match="save the program first"):
        capture.size_mib(tmp_path / "missing.pt")


def test_load_in_new_process_torchscript_and_export(tmp_path):
    args = _args()
    expected = _Doubler()(*args)
    torch.jit.save(torch.jit.trace(_Doubler(), args), str(tmp_path / "m.pt"))
    torch.export.save(torch.export.export(_Doubler(), args), tmp_path / "m.pt2")
    for kind, path in (("TorchScript", tmp_path / "m.pt"), ("torch.export", tmp_path / "m.pt2")):
        stages, answer = capture.load_in_new_process(kind, path, args, threads=1)
        assert list(stages) == ["interpreter start", "import torch", "load", "first request", "second request"], stages
        assert all(isinstance(s, float) and 0 <= s < 120 for s in stages.values()), stages
        assert torch.equal(answer, expected), kind


def test_load_in_new_process_eager_pools_like_the_course(tmp_path):
    from transformers import BertConfig, BertModel

    from helpers.onnx_models import PooledEncoder
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32)).eval()
    model.save_pretrained(tmp_path / "eager")
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 4:] = 0
    stages, answer = capture.load_in_new_process("eager (from_pretrained)", tmp_path / "eager", (ids, mask), threads=1)
    assert "import transformers" in stages and list(stages).index("import transformers") < list(stages).index("load")
    with torch.inference_mode():
        assert torch.allclose(answer, PooledEncoder(model)(ids, mask), atol=1e-6)


def test_load_in_new_process_says_what_went_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown kind of program 'onnx'"):
        capture.load_in_new_process("onnx", tmp_path, _args(), threads=1)
    with pytest.raises(FileNotFoundError, match="no saved program"):
        capture.load_in_new_process("TorchScript", tmp_path / "none.pt", _args(), threads=1)
    (tmp_path / "broken.pt").write_bytes(b"not an archive")
    with pytest.raises(RuntimeError, match="loading the TorchScript program in a new process failed: .+"):
        capture.load_in_new_process("TorchScript", tmp_path / "broken.pt", _args(), threads=1)
