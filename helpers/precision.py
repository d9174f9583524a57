"""Number formats for lab 05: what each keeps, and a switch for TF32 matrix multiplications.

TF32 is not a tensor dtype: tensors stay float32 in memory, and NVIDIA tensor cores
(compute capability 8.0 and newer) multiply them with a 10-bit mantissa when allowed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# (name, dtype for torch.finfo, exponent bits, mantissa bits as stored)
_FORMATS = (
    ("float32", torch.float32, 8, 23),
    ("TF32 (tensor-core math on float32 data)", torch.float32, 8, 10),
    ("bfloat16", torch.bfloat16, 8, 7),
    ("float16", torch.float16, 5, 10),
)


def number_formats() -> "pandas.DataFrame":  # noqa: F821
    """One row per format: bits, largest finite value, and relative precision (machine epsilon)."""
    import pandas as pd
    rows = {}
    for name, dtype, exp_bits, mant_bits in _FORMATS:
        info = torch.finfo(dtype)
        rows[name] = {
            "bits in memory": info.bits,
            "exponent bits": exp_bits,
            "mantissa bits": mant_bits,
            "largest value": float(info.max),
            "epsilon (relative step)": 2.0 ** -mant_bits,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("format")


@contextlib.contextmanager
def tf32_matmuls() -> Iterator[None]:
    """Allow TF32 for float32 matrix multiplications on CUDA inside the block, then restore the setting.

    Uses PyTorch's per-backend setting ``torch.backends.cuda.matmul.fp32_precision = "tf32"``
    (PyTorch 2.9+), which leaves CPU math alone.  Older PyTorch has only the global switches
    ``torch.set_float32_matmul_precision("high")`` and ``torch.backends.cuda.matmul.allow_tf32 = True``
    (still common in code you will read); they are used there.  Recent PyTorch raises an
    error when one process mixes the two styles, so a program should pick one.
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        before = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = before
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
