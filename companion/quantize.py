"""Weight quantization from scratch: absmax and zero-point, per tensor, per channel, per group.

A weight matrix W (out_features x in_features) is cut into groups along its rows: the whole
tensor, one row (an output channel), or `group_size` consecutive weights of a row. Each group gets
a scale s (and, for zero-point quantization, an integer offset z) and each weight an integer q:

- absmax (symmetric):  q = round(w / s) with s = max|w| / (2^(b-1) - 1), so q in [-(2^(b-1) - 1), 2^(b-1) - 1]
- zero-point (affine): q = clamp(round(w / s) + z, 0, 2^b - 1) with s = (max - min) / (2^b - 1),
  z = round(-min / s)

and dequantization gives s * q (or s * (q - z)). Rounding to the nearest integer makes every
error at most s / 2 (tested), so a group with one large weight (an outlier) gets a large s and
coarse steps for all its other weights: smaller groups confine the damage.

Rounding is half away from zero, as in ggml: 8-bit absmax in groups of 32 with float16 scales is
GGUF's Q8_0, and `quantize(..., granularity="group", group_size=32, scale_dtype=torch.float16)`
gives the same bytes as the `gguf` package (tested).

>>> w = torch.randn(4, 64)
>>> qw = quantize(w, bits=4, granularity="group", group_size=32)
>>> (dequantize(qw) - w).abs().max() <= qw.scale.max() / 2
tensor(True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRANULARITIES = ("tensor", "channel", "group")


@dataclass
class Quantized:
    """Integers `q` (groups x group_size), one `scale` (and `zero`) per group, and how to undo them."""

    q: torch.Tensor  # int8 for up to 8 bits (uint8 values 0..255 are kept in int16)
    scale: torch.Tensor  # (groups, 1)
    zero: torch.Tensor | None  # (groups, 1) integer offsets, or None for absmax
    bits: int
    shape: torch.Size

    def nbytes(self) -> int:
        """Bytes of a packed copy: `bits` per weight, plus each group's scale (and zero, one byte)."""
        weights = (self.q.numel() * self.bits + 7) // 8
        extra = self.scale.numel() * self.scale.element_size()
        return weights + extra + (self.zero.numel() if self.zero is not None else 0)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, halves away from zero (C's roundf; torch.round goes to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _groups(w: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "channel":
        return w.reshape(w.shape[0], -1)
    if granularity == "group":
        if w.shape[-1] % group_size:
            raise ValueError(f"the last dimension ({w.shape[-1]}) must be a multiple of group_size={group_size}")
        return w.reshape(-1, group_size)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


@torch.no_grad()
def quantize(w: torch.Tensor, bits: int = 8, *, granularity: str = "channel", group_size: int = 32,
             symmetric: bool = True, scale_dtype: torch.dtype = torch.float32) -> Quantized:
    """Round-to-nearest quantization of a weight tensor to `bits` bits (2 to 8), absmax when
    `symmetric`, else zero-point, with one scale per tensor, per row ("channel") or per group."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    if w.ndim < 1 or w.numel() == 0:
        raise ValueError("nothing to quantize: w is empty")
    g = _groups(w.detach().float(), granularity, group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = g.abs().amax(dim=1, keepdim=True) / qmax
        inverse = torch.where(scale == 0, 0.0, 1.0 / scale)  # multiply by 1/s, as ggml does
        q = round_half_away(g * inverse).clamp(-qmax, qmax)
        zero = None
    else:
        qmax = 2**bits - 1
        low, high = g.amin(dim=1, keepdim=True).clamp(max=0), g.amax(dim=1, keepdim=True).clamp(min=0)
        scale = (high - low) / qmax
        inverse = torch.where(scale == 0, 0.0, 1.0 / scale)
        zero = round_half_away(-low * inverse)
        q = (round_half_away(g * inverse) + zero).clamp(0, qmax)
    storage = torch.int8 if symmetric else torch.int16
    return Quantized(q=q.to(storage), scale=scale.to(scale_dtype), zero=zero, bits=bits, shape=w.shape)


def dequantize(qw: Quantized) -> torch.Tensor:
    """The float32 weights a Quantized stands for: scale * q, or scale * (q - zero)."""
    q = qw.q.float() if qw.zero is None else qw.q.float() - qw.zero
    return (q * qw.scale.float()).reshape(qw.shape)


@torch.no_grad()
def fake_quantize_(module: torch.nn.Module, bits: int = 8, **options) -> int:
    """Replace the weight of every nn.Linear in `module` by its quantized-then-dequantized copy
    (in place: the model computes as a quantized one would); returns how many layers changed."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.weight.copy_(dequantize(quantize(layer.weight, bits, **options)))
            count += 1
    return count
