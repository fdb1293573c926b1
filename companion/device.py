"""Device and mixed-precision choice: cuda > mps > cpu, overridable with ``$COMPANION_DEVICE``."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

_KNOWN = ("cuda", "mps", "cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(prefer: str | None = None) -> torch.device:
    """cuda > mps > cpu, or `prefer` (also read from $COMPANION_DEVICE), e.g. "cpu" or "cuda:1"."""
    prefer = prefer or os.environ.get("COMPANION_DEVICE") or None
    if prefer:
        kind = prefer.split(":")[0]
        if kind not in _KNOWN:
            raise ValueError(f"unknown device {prefer!r}: use one of {', '.join(_KNOWN)} (e.g. 'cuda:0')")
        if kind == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was asked for, but PyTorch sees no CUDA GPU; "
                               "unset COMPANION_DEVICE or install a CUDA build of torch")
        if kind == "mps" and not _mps_available():
            raise RuntimeError(f"device {prefer!r} was asked for, but MPS is not available here; "
                               "unset COMPANION_DEVICE")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """How to run mixed precision on one device."""

    dtype: torch.dtype | None  # autocast dtype; None = plain float32
    use_grad_scaler: bool  # float16 needs loss scaling, bfloat16 does not

    @property
    def accelerate_name(self) -> str:
        """The `mixed_precision` string that `accelerate.Accelerator` expects."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[self.dtype]


def precision_for(device: torch.device | str) -> Precision:
    """bf16 on GPUs that support it, fp16 + grad scaler on older GPUs and on MPS, float32 on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, use_grad_scaler=False)
        return Precision(torch.float16, use_grad_scaler=True)
    if device.type == "mps":
        return Precision(torch.float16, use_grad_scaler=True)
    # bf16 autocast on CPU is slower than float32 without AMX units and changes results.
    return Precision(None, use_grad_scaler=False)


def autocast(device: torch.device | str, precision: Precision | None = None):
    """`torch.autocast` with the device's precision, or a no-op context on float32."""
    device = torch.device(device)
    precision = precision or precision_for(device)
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)
