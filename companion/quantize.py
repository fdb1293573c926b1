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
gives the same bytes as the `gguf` package (tested); `quantize_q4_0` follows GGUF's Q4_0 (4 bits
in groups of 32, the scale signed so that the largest-magnitude weight lands on level -8).

`gptq_quantize` is GPTQ (Frantar et al., 2023): round column by column and spread each column's
error over the columns not yet rounded, weighted by the inverse Hessian X^T X of the layer's inputs
(collected by `input_hessians`); `gptq_model_` applies it to a model's blocks, sequentially or not.

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


def _scale_zero(g: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One scale (and zero) per row of `g`: absmax when `symmetric`, else min/max with 0 in range."""
    if symmetric:
        return g.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1), None
    low, high = g.amin(dim=1, keepdim=True).clamp(max=0), g.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (high - low) / (2**bits - 1)
    return scale, round_half_away(-low * torch.where(scale == 0, 0.0, 1.0 / scale))


def _to_int(g: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """The integers of `g` on the grid of `scale` (and `zero`), rounded half away and clamped."""
    inverse = torch.where(scale == 0, 0.0, 1.0 / scale)  # multiply by 1/s, as ggml does
    if zero is None:
        qmax = 2 ** (bits - 1) - 1
        return round_half_away(g * inverse).clamp(-qmax, qmax)
    return (round_half_away(g * inverse) + zero).clamp(0, 2**bits - 1)


@torch.no_grad()
def quantize(w: torch.Tensor, bits: int = 8, *, granularity: str = "channel", group_size: int = 32,
             symmetric: bool = True, scale_dtype: torch.dtype = torch.float32) -> Quantized:
    """Round-to-nearest quantization of a weight tensor to `bits` bits (2 to 8), absmax when
    `symmetric`, else zero-point, with one scale per tensor, per row ("channel") or per group."""
    _check_bits(bits)
    if w.ndim < 1 or w.numel() == 0:
        raise ValueError("nothing to quantize: w is empty")
    g = _groups(w.detach().float(), granularity, group_size)
    scale, zero = _scale_zero(g, bits, symmetric)
    q = _to_int(g, scale, zero, bits)
    storage = torch.int8 if symmetric else torch.int16
    return Quantized(q=q.to(storage), scale=scale.to(scale_dtype), zero=zero, bits=bits, shape=w.shape)


def _check_bits(bits: int) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")


@torch.no_grad()
def quantize_q4_0(w: torch.Tensor) -> Quantized:
    """GGUF's Q4_0: groups of 32, a float16 scale d = m / -8 where m is the group's weight of largest
    magnitude (sign kept), q = floor(w / d + 0.5) clamped to -8..7, so m itself lands exactly on -8."""
    g = _groups(w.detach().float(), "group", 32)
    m = g.gather(1, g.abs().argmax(dim=1, keepdim=True))
    d = m / -8
    inverse = torch.where(d == 0, 0.0, 1.0 / d)
    q = torch.trunc(g * inverse + 8.5).clamp(0, 15) - 8  # trunc(x + 8.5) as ggml; x >= -8 here
    return Quantized(q=q.to(torch.int8), scale=d.to(torch.float16), zero=None, bits=4, shape=w.shape)


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


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, *, granularity: str = "channel",
                  group_size: int = 128, symmetric: bool = True, damp: float = 0.01,
                  block_size: int = 128, scale_dtype: torch.dtype = torch.float32) -> Quantized:
    """GPTQ (Frantar et al., 2023): quantize the columns of `weight` (out x in) one at a time and
    spread each column's rounding error over the columns not yet quantized, weighted by the inverse
    of `hessian` = X^T X of the layer's inputs (in x in), so that X W^T changes least. `damp` adds
    that share of the mean diagonal to the diagonal; `block_size` columns are updated lazily.
    With an identity Hessian nothing is spread and the result is round-to-nearest's."""
    _check_bits(bits)
    if granularity not in ("channel", "group"):
        raise ValueError(f"GPTQ quantizes per channel or per group, got granularity={granularity!r}")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be {cols} x {cols} for a weight with {cols} columns, got "
                         f"{tuple(hessian.shape)}")
    if granularity == "group" and (cols % group_size or block_size % group_size):
        raise ValueError(f"group_size={group_size} must divide the columns ({cols}) and block_size={block_size}")
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0  # inputs that are always zero: their weights do not matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(cols)
    # the rows of the upper Cholesky factor of H^-1 give the updates of the remaining columns
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    scales, zeros = [], []
    low, high = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    if granularity == "channel":
        scale, zero = _scale_zero(W, bits, symmetric)
        inverse, offset = torch.where(scale == 0, 0.0, 1.0 / scale), 0 if zero is None else zero
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, errors = W[:, start:end].clone(), torch.zeros(rows, end - start)
        for i in range(end - start):
            if granularity == "group" and i % group_size == 0:  # the group's scale, from its weights now
                scale, zero = _scale_zero(block[:, i:i + group_size], bits, symmetric)
                inverse, offset = torch.where(scale == 0, 0.0, 1.0 / scale), 0 if zero is None else zero
                scales.append(scale)
                zeros.append(zero)
            column = block[:, i:i + 1]
            q = (round_half_away(column * inverse) + offset).clamp_(low, high)  # as _to_int
            Q[:, start + i:start + i + 1] = q
            error = (column - scale * (q - offset)) / U[start + i, start + i]
            block[:, i:].addmm_(error, U[start + i:start + i + 1, start + i:end], alpha=-1)
            errors[:, i:i + 1] = error
        W[:, end:] -= errors @ U[start:end, end:]  # the lazy update of the columns after the block
    if granularity == "channel":
        scales, zeros, q = [scale], [zero], Q
    else:
        q = Q.reshape(rows, -1, group_size).reshape(-1, group_size)  # row-major groups, as quantize's
    scale = torch.stack(scales, dim=1).reshape(-1, 1)
    zero = None if symmetric else torch.stack(zeros, dim=1).reshape(-1, 1)
    storage = torch.int8 if symmetric else torch.int16
    return Quantized(q=q.to(storage), scale=scale.to(scale_dtype), zero=zero, bits=bits, shape=weight.shape)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layers of interest have seen their inputs."""


@torch.no_grad()
def input_hessians(model: torch.nn.Module, batches: list[torch.Tensor], layers: dict[str, torch.nn.Linear], *,
                   stop_after: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """X^T X of the inputs each of `layers` receives while `model` reads the token ids in `batches`,
    collected with forward hooks; the pass ends early after `stop_after` (a block) has run."""
    hessians = {name: torch.zeros(layer.in_features, layer.in_features) for name, layer in layers.items()}

    def accumulate(name):
        def hook(_module, inputs, _output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            hessians[name] += x.T @ x
        return hook

    def stop(*_):
        raise _Stop

    handles = [layer.register_forward_hook(accumulate(name)) for name, layer in layers.items()]
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(stop))
    try:
        for ids in batches:
            try:
                model(ids)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return hessians


@torch.no_grad()
def gptq_model_(model: torch.nn.Module, batches: list[torch.Tensor], blocks: list[torch.nn.Module],
                bits: int = 4, *, sequential: bool = True, **options) -> dict[str, Quantized]:
    """Replace the weight of every nn.Linear inside `blocks` (a model's decoder layers) by its GPTQ
    quantization, with Hessians from `batches` of token ids. `sequential`, as in the paper: block by
    block, each block's inputs computed by the already quantized blocks before it (one partial
    forward pass a block); else all at once from the unquantized model's activations (one pass)."""
    names = {module: name for name, module in model.named_modules()}
    groups = [{names[m]: m for m in block.modules() if isinstance(m, torch.nn.Linear)} for block in blocks]
    if not sequential:
        groups = [{name: m for group in groups for name, m in group.items()}]
    result = {}
    for index, layers in enumerate(groups):
        stop_after = blocks[index] if sequential else blocks[-1]
        hessians = input_hessians(model, batches, layers, stop_after=stop_after)
        for name, layer in layers.items():
            result[name] = gptq_quantize(layer.weight, hessians[name], bits, **options)
            layer.weight.copy_(dequantize(result[name]))
    return result
