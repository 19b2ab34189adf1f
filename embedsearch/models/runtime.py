"""Where and how a backbone's forward runs: the device (`auto` → CUDA when torch sees a GPU), the autocast
precision, and the one autocast seam that index builds and query embeddings share. The batched runner that uses them
lives with the build engines (build/engines/local.py)."""

from __future__ import annotations

from pathlib import Path

from embedsearch.core.errors import EmbedsearchError


def resolve_device(device: str = "auto") -> str:
    """The CUDA seam for inference: `auto` picks cuda when torch sees a GPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EmbedsearchError(f"--device {device} asked for, but torch sees no CUDA GPU")
    return device


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX); without them bf16 is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """`auto`: bf16 (or fp16) autocast on CUDA; on CPU bf16 where it has native bf16 instructions, else fp32."""
    import torch

    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: str, precision: str | None):
    """The one autocast seam for backbone forwards: bf16/fp16 on the device's type, a no-op for fp32/None. Index
    builds and query embeddings both use it with the index's recorded precision, so a query image that is in the
    index gets the very vector stored for it."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or "fp32")
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype, enabled=dtype is not None)
