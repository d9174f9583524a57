"""Run profiles: how much work a lab does, so one notebook serves CI and real measurements.

``smoke`` is for CI and autograding: the small trained model, short inputs and a few
repetitions, so a whole lab runs in well under a minute on two CPU cores.  ``full`` is
for real numbers: the course's reference encoder, 128-token inputs and 100 timed runs.

The profile comes from, in order: the notebook's papermill parameter (passed to
:func:`get_profile`), the ``LAB_PROFILE`` environment variable, then ``full``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .models import DEFAULT_MODEL, FALLBACK_MODEL

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
    threads: int | None  # CPU threads for timing; None keeps torch's default
    save_figures: bool   # write charts under images/

    def describe(self) -> str:
        threads = "torch default" if self.threads is None else str(self.threads)
        return (f"profile '{self.name}': {self.runs} timed runs after {self.warmup} warm-up, "
                f"batch {self.batch_size} x {self.seq_len} tokens, model {self.model_name}, "
                f"CPU threads: {threads}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", runs=10, warmup=2, batch_size=1, seq_len=32,
                     model_name=FALLBACK_MODEL, threads=None, save_figures=False),
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
    for key_ in ("runs", "batch_size", "seq_len"):
        if key_ in changes and int(changes[key_]) < 1:
            raise ValueError(f"{key_} must be at least 1, got {changes[key_]!r}")
    if "warmup" in changes and int(changes["warmup"]) < 0:
        raise ValueError(f"warmup must be 0 or more, got {changes['warmup']!r}")
    return dataclasses.replace(PROFILES[key], **changes)
