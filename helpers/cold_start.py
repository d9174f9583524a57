"""Cold start, stage by stage: a fresh interpreter that times each stage of a start (lab 08).

A start is a list of named stages of Python code (import torch, import transformers, build
the model, load its weights, warm up, answer the first request).  :data:`CHILD_PROGRAM` runs
them **in a new Python process**, one after another in one namespace, and prints one line per
finished stage: ``@stage {"stage": ..., "s": ...}``.  Its first line, ``interpreter start``, is
the time from the moment the parent spawned it (``$COURSE_SPAWNED_AT``, a ``time.time()``
stamp) to the child's first statement.  Nothing is imported before the stages but ``json``,
``os``, ``sys`` and ``time``, so every import a start pays is inside a timed stage.

The parent's side (start the child, read its lines, report a failed or hung start) is the lab's
exercise 8.1, so it is not here.  :func:`start_stages` holds the start strategies the lab
compares, as code, so that each one runs in its own fresh process exactly as a server would start.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

SPAWNED_ENV = "COURSE_SPAWNED_AT"
MARK = "@stage "

CHILD_PROGRAM = r'''
import time
_t0 = time.time()
import json, os, sys
print("@stage " + json.dumps({"stage": "interpreter start",
                              "s": _t0 - float(os.environ.get("COURSE_SPAWNED_AT", _t0))}), flush=True)
_namespace = {"__name__": "__stage__"}
for _name, _code in json.loads(sys.argv[1]):
    _start = time.perf_counter()
    exec(compile(_code, "<stage " + _name + ">", "exec"), _namespace)
    print("@stage " + json.dumps({"stage": _name, "s": time.perf_counter() - _start}), flush=True)
'''


def stage_times(stdout: str) -> dict[str, float]:
    """The ``@stage`` lines of a child's output, as {stage: seconds}, in the order they finished."""
    times = {}
    for line in (stdout or "").splitlines():
        if line.startswith(MARK):
            record = json.loads(line[len(MARK):])
            times[record["stage"]] = float(record["s"])
    return times


# --- the start strategies the lab compares ------------------------------------------------

STRATEGIES = ("from_pretrained", "meta + safetensors", "TorchScript archive")
# from_pretrained, then torch.compile, by which Inductor cache the new process finds.  In one round of
# starts they run in this order and share a folder (:func:`start_stages`' ``compile_dir``): the cold
# start fills a cache and saves its portable artifacts, the warm start finds that cache on disk, the
# portable start finds an empty disk and loads the artifacts.
COMPILED_STRATEGIES = ("compiled, cold cache", "compiled, warm cache", "compiled, portable cache")
REQUEST_TEXT = "How long does a cold replica take to give its first right answer?"
TORCHSCRIPT_FILE = "encoder.torchscript.pt"


def write_model_files(encoder, folder: str | os.PathLike, *, batch_size: int, seq_len: int) -> dict:
    """What a server would ship: ``save_pretrained`` weights (safetensors) and config, the
    tokenizer (``tokenizer.json``), and a TorchScript archive of the same model (traced at
    ``batch_size`` x ``seq_len``; TorchScript is deprecated, kept only to test a plan that
    relies on it).  Returns the paths and file sizes in MiB."""
    import warnings
    from pathlib import Path

    import torch

    from .models import inputs_of_shape
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, tokenizer = encoder.model.eval(), encoder.tokenizer
    model.save_pretrained(folder)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "pad.json").write_text(json.dumps({"pad_id": int(tokenizer.pad_token_id),
                                                 "pad_token": tokenizer.pad_token}), encoding="utf-8")

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = inputs_of_shape(tokenizer, batch_size, seq_len)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings: TorchScript is legacy
        traced = torch.jit.trace(LastHiddenState(model), (example["input_ids"], example["attention_mask"]),
                                 strict=False)
        torch.jit.save(traced, str(folder / TORCHSCRIPT_FILE))
    sizes = {name: (folder / name).stat().st_size / 2**20 for name in ("model.safetensors", TORCHSCRIPT_FILE)}
    return {"folder": folder, "sizes_mib": sizes}


def start_stages(strategy: str, folder: str | os.PathLike, *, threads: int, batch_size: int, seq_len: int,
                 out: str | os.PathLike, compile_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The code of one start, stage by stage, for the lab's stage timer (exercise 8.1).

    Every strategy imports torch, reads the tokenizer, gets a runnable model its own way,
    warms up on one 8-token text, then answers a request of ``batch_size`` x ``seq_len`` tokens
    twice; the first request's sentence embedding is saved to ``out`` so the notebook can check
    that the start gave the *right* answer, not only a fast one.

    The :data:`COMPILED_STRATEGIES` are ``from_pretrained`` wrapped in ``torch.compile``, so the
    warm-up compiles, and a first request of another shape compiles again (unless the cache says
    which dimensions change).  They need ``compile_dir``, one folder per round of starts: the cold
    and warm starts point ``TORCHINDUCTOR_CACHE_DIR`` at ``compile_dir/disk`` (empty for the cold
    one, which then saves ``torch.compiler.save_cache_artifacts()`` to ``compile_dir/artifacts.bin``
    after its answers, as an image build would), the portable start at the empty
    ``compile_dir/fresh``, after ``torch.compiler.load_cache_artifacts`` of those bytes.
    """
    if strategy not in STRATEGIES + COMPILED_STRATEGIES:
        raise ValueError(f"unknown start strategy {strategy!r}: use one of {STRATEGIES + COMPILED_STRATEGIES}")
    compiled = strategy in COMPILED_STRATEGIES
    if compiled and compile_dir is None:
        raise ValueError(f"{strategy!r} needs compile_dir: the folder its Inductor cache and artifacts live in")
    folder, out = str(folder), str(out)
    stages = {"import torch": f"import torch\ntorch.set_num_threads({int(threads)})"}
    if compiled:
        cache = os.path.join(str(compile_dir), "fresh" if strategy == "compiled, portable cache" else "disk")
        artifacts = os.path.join(str(compile_dir), "artifacts.bin")
        stages["import torch"] = f"import os\nos.environ['TORCHINDUCTOR_CACHE_DIR'] = {cache!r}\n" + stages["import torch"]
    stages["tokenizer"] = (
        "import json\nfrom tokenizers import Tokenizer\n"
        f"tok = Tokenizer.from_file({folder!r} + '/tokenizer.json')\n"
        f"pad = json.load(open({folder!r} + '/pad.json'))\n"
        "def encode(texts, length):\n"
        "    tok.enable_padding(pad_id=pad['pad_id'], pad_token=pad['pad_token'], length=length)\n"
        "    tok.enable_truncation(length)\n"
        "    rows = tok.encode_batch(texts)\n"
        "    return (torch.tensor([r.ids for r in rows]), torch.tensor([r.attention_mask for r in rows]))")
    if strategy == "TorchScript archive":
        stages["load the archive"] = (
            "import warnings\nwith warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n"
            f"    model = torch.jit.load({folder!r} + '/{TORCHSCRIPT_FILE}')\n"
            "def hidden(ids, mask):\n    return model(ids, mask)")
    else:
        stages["import transformers"] = "from transformers import AutoConfig, AutoModel"
        stages["import the model's code"] = (
            f"config = AutoConfig.from_pretrained({folder!r})\n"
            "from transformers.models.auto.modeling_auto import MODEL_MAPPING\n"
            "model_class = MODEL_MAPPING[type(config)]  # imports e.g. transformers.models.bert.modeling_bert")
        if strategy == "from_pretrained" or compiled:
            stages["build + load weights"] = (
                "from transformers.utils import logging\nlogging.disable_progress_bar()\n"
                f"model = AutoModel.from_pretrained({folder!r}).eval()")
        else:
            stages["build + load weights"] = (
                "from accelerate import init_empty_weights\nfrom safetensors.torch import load_file\n"
                "with init_empty_weights():  # parameters on the meta device: no memory, no random init\n"
                "    model = AutoModel.from_config(config)\n"
                f"model.load_state_dict(load_file({folder!r} + '/model.safetensors'), assign=True, strict=False)\n"
                "model.eval()")
        stages["build + load weights"] += (
            "\ndef hidden(ids, mask):\n    return model(input_ids=ids, attention_mask=mask).last_hidden_state")
    if compiled:
        if strategy == "compiled, portable cache":
            stages["load cache artifacts"] = f"torch.compiler.load_cache_artifacts(open({artifacts!r}, 'rb').read())"
        stages["build + load weights"] += "\nmodel = torch.compile(model)  # lazy: the first call compiles"
    stages["warm-up (1 x 8 tokens)"] = (
        "with torch.inference_mode():\n    hidden(*encode(['warm-up'], 8))")
    request = (f"with torch.inference_mode():\n"
               f"    ids, mask = encode([{REQUEST_TEXT!r}] * {int(batch_size)}, {int(seq_len)})\n"
               "    h = hidden(ids, mask)\n"
               "    w = mask.unsqueeze(-1).to(h.dtype)\n"
               "    vector = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=1)[0]\n")
    stages["first request"] = request + f"torch.save(vector.clone(), {out!r})"
    stages["second request"] = request
    if strategy == "compiled, cold cache":
        stages["save cache artifacts (image build)"] = (
            "saved = torch.compiler.save_cache_artifacts()\n"
            f"open({artifacts!r}, 'wb').write(saved[0] if saved else b'')")
    return stages


def request_embedding(model, tokenizer, *, seq_len: int) -> "torch.Tensor":  # noqa: F821
    """The request's sentence embedding from ``model``, computed in this process with transformers' tokenizer
    (the starts pool the same way inside their own processes, which do not import helpers)."""
    import torch

    from .models import sentence_embeddings
    tokens = tokenizer([REQUEST_TEXT], padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    with torch.inference_mode():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return sentence_embeddings(out.last_hidden_state, tokens["attention_mask"])[0]


def reference_embedding(encoder, *, seq_len: int) -> "torch.Tensor":  # noqa: F821
    """The request's embedding from the encoder this notebook loaded: what a start must reproduce
    to count as a right answer."""
    return request_embedding(encoder.model, encoder.tokenizer, seq_len=seq_len)


# --- tables, a chart and a verdict ----------------------------------------------------------

def stage_table(runs: Mapping[str, list[Mapping[str, float]]]) -> "pandas.DataFrame":  # noqa: F821
    """Median and p25-p75 of every stage of every strategy ({strategy: [stage times of each start]})."""
    import numpy as np
    import pandas as pd
    rows = []
    for strategy, starts in runs.items():
        stages = list(dict.fromkeys(name for start in starts for name in start))
        for stage in stages:
            values = np.array([start[stage] for start in starts if stage in start])
            rows.append({"strategy": strategy, "stage": stage, "starts": len(values),
                         "median (s)": float(np.median(values)), "p25 (s)": float(np.percentile(values, 25)),
                         "p75 (s)": float(np.percentile(values, 75))})
    return pd.DataFrame(rows).set_index(["strategy", "stage"])


def first_answer_s(stages: Mapping[str, float]) -> float:
    """Process start to the first answer: the sum of the stages up to and including ``first request``."""
    names = list(stages)
    upto = names[: names.index("first request") + 1] if "first request" in names else names
    return float(sum(stages[name] for name in upto))


def totals(runs: Mapping[str, list[Mapping[str, float]]]) -> "pandas.DataFrame":  # noqa: F821
    """Process start to first answer (:func:`first_answer_s`) per strategy: median and p25-p75 over the starts."""
    import numpy as np
    import pandas as pd
    rows = {}
    for strategy, starts in runs.items():
        values = np.array([first_answer_s(start) for start in starts])
        rows[strategy] = {"starts": len(values), "to first answer, median (s)": float(np.median(values)),
                          "p25 (s)": float(np.percentile(values, 25)), "p75 (s)": float(np.percentile(values, 75))}
    return pd.DataFrame(rows).T.rename_axis("strategy")


def plot_stages(table: "pandas.DataFrame", title: str | None = None, ax=None):  # noqa: F821
    """One stacked horizontal bar per strategy: the median of each stage, in start order."""
    import matplotlib.pyplot as plt
    strategies = list(dict.fromkeys(table.index.get_level_values(0)))
    stages = list(dict.fromkeys(table.index.get_level_values(1)))
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 1.4 + 0.7 * len(strategies)))
    colours = plt.get_cmap("tab20").colors
    drawn = set()
    for row, strategy in enumerate(strategies):
        left = 0.0
        for stage in table.loc[strategy].index:  # this strategy's own order; one colour per stage name
            width = float(table.loc[(strategy, stage), "median (s)"])
            ax.barh(row, width, left=left, color=colours[stages.index(stage) % len(colours)],
                    label=None if stage in drawn else stage)
            drawn.add(stage)
            left += width
    ax.set_yticks(range(len(strategies)), strategies)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from process start (median of each stage)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    ax.figure.tight_layout()
    return ax.figure


def stage_verdict(table: "pandas.DataFrame") -> str:  # noqa: F821
    """What dominates each start on this machine, from the medians (a sentence per strategy)."""
    lines = []
    for strategy in dict.fromkeys(table.index.get_level_values(0)):
        medians = table.loc[strategy]["median (s)"]
        total = first_answer_s(medians.to_dict())
        part = medians.iloc[: list(medians.index).index("first request") + 1] if "first request" in medians.index else medians
        imports = float(part[[name for name in part.index if name.startswith("import")]].sum())
        top = part.idxmax()
        lines.append(f"{strategy}: its stage medians add up to {total:.2f} s to the first answer; the largest stage is '{top}' "
                     f"({part[top]:.2f} s, {100 * part[top] / total:.0f} %); imports take "
                     f"{imports:.2f} s ({100 * imports / total:.0f} %).")
    return "\n".join(lines)


# --- readiness, seen from a load balancer ---------------------------------------------------

def watch_server_start(app: str, context: str | os.PathLike, *, timeout: float = 180, poll_s: float = 0.05,
                       payload: Mapping | None = None, **env: str) -> dict:
    """Start lab 07's server ``app`` and poll it the way a load balancer would, until it is ready.

    Polls ``GET /health`` every ``poll_s`` seconds from the moment the process is spawned and,
    while it is not ready, also tries ``POST /embed`` once per new state.  Returns seconds from
    spawn: ``port_open_s`` (first HTTP answer of any status), ``ready_s`` (first 200 from
    ``/health``), ``first_answer_s`` (first 200 from ``/embed``), the ``states`` seen as
    ``(seconds, status, stage)``, the status codes ``/embed`` got before ready, and the failure
    (``failed``: the error the server reported) if it never became ready.  The server is stopped.
    """
    import httpx

    from .deployment import ServedApp
    payload = dict(payload or {"texts": [REQUEST_TEXT]})
    result = {"port_open_s": None, "ready_s": None, "first_answer_s": None, "states": [],
              "embed_before_ready": [], "failed": None}
    server = ServedApp(app, context, **env)
    start = time.perf_counter()
    server.spawn()
    try:
        with httpx.Client(base_url=server.url, timeout=5.0) as client:
            while time.perf_counter() - start < timeout:
                if server.process.poll() is not None:
                    result["failed"] = f"the server exited with code {server.process.returncode} before it was ready"
                    break
                try:
                    health = client.get("/health")
                except httpx.TransportError:  # nothing listens yet: the port is closed
                    time.sleep(poll_s)
                    continue
                now = time.perf_counter() - start
                if result["port_open_s"] is None:
                    result["port_open_s"] = now
                body = health.json()
                state = "ready" if health.status_code == 200 else body.get("status", "?")
                if not result["states"] or result["states"][-1][1:] != (state, body.get("stage")):
                    result["states"].append((now, state, body.get("stage")))
                    if health.status_code != 200:
                        result["embed_before_ready"].append(client.post("/embed", json=payload).status_code)
                if health.status_code == 200:
                    result["ready_s"] = now
                    client.post("/embed", json=payload).raise_for_status()
                    result["first_answer_s"] = time.perf_counter() - start
                    break
                if state == "failed":
                    result["failed"] = body.get("error")
                    break
                time.sleep(poll_s)
            else:
                result["failed"] = f"not ready within {timeout:g} s"
    finally:
        server.stop()
    return result


# --- the plan's int8 claim: a smaller file, and what it costs to use it ----------------------

def int8_weights(state: Mapping[str, "torch.Tensor"]) -> dict:  # noqa: F821
    """An int8 copy of a state dict: every 2-D float weight as int8 with one fp32 scale per output row
    (symmetric, per channel: what int8 weight-only quantization stores); everything else unchanged."""
    import torch
    out = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.dim() == 2 and name.endswith("weight"):
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            out[name] = torch.round(tensor / scale).clamp(-127, 127).to(torch.int8)
            out[name + ".int8_scale"] = scale.to(torch.float32)
        else:
            out[name] = tensor
    return out


def dequantized(state: Mapping[str, "torch.Tensor"]) -> dict:  # noqa: F821
    """The fp32 state dict an eager model can run, from :func:`int8_weights`' output."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(".int8_scale"):
            continue
        scale = state.get(name + ".int8_scale")
        out[name] = tensor.float() * scale if scale is not None else tensor
    return out
