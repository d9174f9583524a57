"""Run profiles: how much work a lab does, so one notebook serves CI and real measurements.

``smoke`` is a smoke test, for CI and autograding: it proves that every cell works and
every test can pass or fail, and produces no figures worth quoting.  It runs a 2-layer
slice of the trained MiniLM (still trained weights), 32-token inputs, a few repetitions,
a small fixed slice of the Q&A set and **one** CPU thread, so a lab fits in well under a
minute on either kind of 2-core box and two graders can share two cores.  ``full`` is for
real numbers: the course's reference encoder, 128-token inputs, 100 timed runs, the whole
Q&A set and every core torch would use by default.

The thread count is always a number (never "whatever torch picks"): a lab's setup cell
calls :func:`helpers.use_threads` with it once, and the same count is passed to timing,
compiling, new-process probes and ONNX Runtime sessions, so they all measure one setting.

The profile comes from, in order: the notebook's papermill parameter (passed to
:func:`get_profile`), the ``LAB_PROFILE`` environment variable, then ``full``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .models import DEFAULT_MODEL, SMOKE_MODEL

ENV_VAR = "LAB_PROFILE"


@dataclass(frozen=True)
class Profile:
    """The knobs every lab reads instead of hard-coding sizes."""

    name: str
    runs: int            # timed repetitions per variant
    warmup: int          # untimed calls before timing starts
    batch_size: int      # sentences per forward pass in the speed experiments
    seq_len: int         # tokens per sentence (inputs are padded/truncated to exactly this)
    model_name: str      # encoder to load (see helpers.models.load_encoder)
    threads: int | None  # CPU threads for everything the lab runs; None in PROFILES = torch's default,
                         # resolved to a number by get_profile()
    save_figures: bool   # write charts under images/ and rows to the results file
    eval_pairs: int | None = None  # Q&A pairs for quality figures (None: all of them)

    def describe(self) -> str:
        threads = "torch default" if self.threads is None else str(self.threads)
        pairs = "all" if self.eval_pairs is None else str(self.eval_pairs)
        return (f"profile '{self.name}': {self.runs} timed runs after {self.warmup} warm-up, "
                f"batch {self.batch_size} x {self.seq_len} tokens, model {self.model_name}, "
                f"CPU threads: {threads}, Q&A pairs for quality: {pairs}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", runs=5, warmup=1, batch_size=1, seq_len=32,
                     model_name=SMOKE_MODEL, threads=1, save_figures=False, eval_pairs=24),
    "full": Profile("full", runs=100, warmup=10, batch_size=1, seq_len=128,
                    model_name=DEFAULT_MODEL, threads=None, save_figures=True),
}


def get_profile(name: str | None = None, **overrides) -> Profile:
    """Return the profile called ``name`` (else ``$LAB_PROFILE``, else ``full``).

    Keyword overrides replace single fields; ``None`` values are ignored, so a notebook
    can pass its papermill parameters straight through (``runs=N_RUNS`` with ``N_RUNS = None``).
    """
    chosen = name or os.environ.get(ENV_VAR) or "full"
    key = str(chosen).strip().lower()
    if key not in PROFILES:
        raise ValueError(f"Unknown lab profile {chosen!r}: use one of {sorted(PROFILES)} "
                         f"(set by the LAB_PROFILE parameter or environment variable).")
    fields = {f.name for f in dataclasses.fields(Profile)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"get_profile() got unknown settings {sorted(unknown)}; known: {sorted(fields)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key_ in ("runs", "batch_size", "seq_len", "threads", "eval_pairs"):
        if key_ in changes and int(changes[key_]) < 1:
            raise ValueError(f"{key_} must be at least 1, got {changes[key_]!r}")
    if "warmup" in changes and int(changes["warmup"]) < 0:
        raise ValueError(f"warmup must be 0 or more, got {changes['warmup']!r}")
    profile = dataclasses.replace(PROFILES[key], **changes)
    if profile.threads is None:  # one number for the whole lab: what torch would use by default
        profile = dataclasses.replace(profile, threads=default_threads())
    return profile


def default_threads() -> int:
    """The thread count torch picks by itself in a fresh process (one per physical core, at most).

    Read before any lab changes it: ``torch.get_num_threads()`` in a process where
    :func:`helpers.use_threads` already ran would return that count instead.
    """
    return _DEFAULT_THREADS


_DEFAULT_THREADS = torch.get_num_threads()
