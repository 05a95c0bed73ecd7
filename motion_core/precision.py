"""Precision names as users choose them (``fp32``, ``bf16``, ``fp16``) and their torch dtypes: the one
map that the tuner, the nodes, the benchmark and the memory estimate share."""

from __future__ import annotations

import torch

from .errors import InputError

#: precision name -> torch dtype
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: torch dtype -> precision name
NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
#: the half-precision storage dtypes
HALF = (torch.float16, torch.bfloat16)


def dtype_of(name: str, what: str = "precision") -> torch.dtype:
    """The dtype of precision ``name``; an unknown name is an :class:`InputError` naming ``what``."""
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"{what} must be one of {', '.join(DTYPES)}; got {name!r}") from None


def name_of(dtype: torch.dtype) -> str:
    """The precision name of ``dtype`` (float32, bfloat16 or float16)."""
    try:
        return NAMES[dtype]
    except KeyError:
        raise InputError(f"no precision name for {dtype}; use one of {', '.join(DTYPES)}") from None
