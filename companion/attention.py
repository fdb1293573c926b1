"""Attention from scratch: scaled dot-product attention, masks, multi-head attention, positions.

Every piece here is checked against PyTorch's own implementations in ``tests/test_attention.py``.
Masks follow the convention of ``torch.nn.functional.scaled_dot_product_attention``: a boolean
mask is ``True`` where a query MAY attend to a key; a float mask is added to the scores.
`MultiHeadAttention` is also the attention of the book's models (``companion.gpt``,
``companion.bert``); when they do not need the weights, `attention` hands the same formula to
PyTorch's fused kernel, which never stores them.

>>> import torch
>>> from companion.attention import scaled_dot_product_attention, causal_mask
>>> x = torch.randn(2, 5, 8)                                   # (batch, tokens, features)
>>> out, weights = scaled_dot_product_attention(x, x, x, mask=causal_mask(5))
>>> out.shape, weights.shape
(torch.Size([2, 5, 8]), torch.Size([2, 5, 5]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MultiHeadAttention",
    "apply_rope",
    "attention",
    "causal_mask",
    "check_attention_inputs",
    "combine_masks",
    "copy_from_torch",
    "padding_mask",
    "rope_angles",
    "scaled_dot_product_attention",
    "sinusoidal_positions",
]


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, *,
                                 dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / sqrt(d_k)) v over the last two dimensions; returns (output, weights).

    q: (..., L_q, d_k), k: (..., L_k, d_k), v: (..., L_k, d_v); leading dimensions broadcast.
    mask: broadcastable to (..., L_q, L_k); bool (True = may attend) or float (added to scores).
    A query that may attend to no key at all gets all-zero weights and a zero output, as in
    ``torch.nn.functional.scaled_dot_product_attention``. dropout_p > 0 (training) zeroes
    weights at random and scales the others by 1 / (1 - dropout_p); those weights are returned.
    """
    check_attention_inputs(q, k, v, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., L_q, L_k)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:  # filling -inf again keeps NaN out of a fully masked row's gradient
        scores = (scores + mask).masked_fill(mask.isneginf(), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # rows with every key masked: 0/0 -> 0
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v, weights


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None = None) -> None:
    """Raise a clear error when q, k, v and mask cannot go into attention together."""
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys need the same feature size d_k: q has {q.shape[-1]} "
                         f"(shape {tuple(q.shape)}), k has {k.shape[-1]} (shape {tuple(k.shape)})")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys and values need the same number of tokens: k has {k.shape[-2]} "
                         f"(shape {tuple(k.shape)}), v has {v.shape[-2]} (shape {tuple(v.shape)})")
    if mask is None:
        return
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = may attend) or float (added), got {mask.dtype}")
    if any(m not in (1, n) for m, n in zip(reversed(mask.shape), (k.shape[-2], q.shape[-2]))):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
                         f"shape (..., L_q, L_k) = (..., {q.shape[-2]}, {k.shape[-2]})")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              *, dropout_p: float = 0.0,
              need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`scaled_dot_product_attention`, or with need_weights=False PyTorch's fused kernel of it.

    The fused kernel computes the same formula (masks, fully masked rows and dropout included)
    without storing the (L_q, L_k) weights, so training runs faster; it returns (output, None).
    """
    if need_weights:
        return scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout_p)
    check_attention_inputs(q, k, v, mask)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(q.dtype)  # the fused kernel wants the queries' dtype
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None


def causal_mask(n: int, *, n_keys: int | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n_keys) bool: the n queries are the last n of n_keys tokens (default n_keys = n, the
    square lower triangle); each may attend to itself and the keys before it (a KV cache's case)."""
    n_keys = n if n_keys is None else n_keys
    if n < 1:
        raise ValueError(f"n must be a positive number of tokens, got {n}")
    if n_keys < n:
        raise ValueError(f"n_keys={n_keys} is fewer than the n={n} queries: the queries are the last "
                         "n of the n_keys tokens")
    return torch.ones(n, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n)


def padding_mask(lengths: Sequence[int] | torch.Tensor, n: int | None = None) -> torch.Tensor:
    """(batch, n) bool: True for the first lengths[b] tokens of row b, False for padding.

    This is a Hugging Face ``attention_mask`` as booleans (``attention_mask.bool()`` gives the
    same thing). To mask keys, index it as ``pad[:, None, :]`` for (batch, L_q, L_k) scores, or
    ``pad[:, None, None, :]`` for (batch, heads, L_q, L_k).
    """
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1 or lengths.is_floating_point():
        raise ValueError(f"lengths must be a 1-d sequence of integers, got {lengths!r}")
    if (lengths < 0).any():
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    longest = int(lengths.max())
    n = longest if n is None else n
    if n < longest:
        raise ValueError(f"n={n} is shorter than the longest sequence ({longest} tokens)")
    return torch.arange(n, device=lengths.device) < lengths[:, None]


def combine_masks(n_queries: int, n_keys: int, *, padding: torch.Tensor | None = None,
                  causal: bool = False, mask: torch.Tensor | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor | None:
    """One mask for (batch, heads, n_queries, n_keys) scores from key padding, causality, `mask`.

    padding: (batch, n_keys), True (or 1) = real token; causal: `causal_mask(n_queries,
    n_keys=n_keys)`, built on `device`; mask: any extra bool or float mask. The result is bool
    unless `mask` is float (then blocked pairs are -inf, added to it); None if there is no mask.
    """
    full = None
    if padding is not None:
        if padding.ndim != 2 or padding.shape[1] != n_keys:
            raise ValueError(f"padding must have shape (batch, L_k) with L_k = {n_keys}, "
                             f"got {tuple(padding.shape)}")
        full = padding.bool()[:, None, None, :]
    if causal and n_queries > 1:  # a single query, the last position, may see every key
        c = causal_mask(n_queries, n_keys=n_keys, device=device)
        full = c if full is None else full & c
    if mask is None or full is None:
        return full if mask is None else mask
    if mask.dtype == torch.bool:
        return full & mask
    blocked = torch.zeros(full.shape, dtype=mask.dtype, device=mask.device)
    return blocked.masked_fill(~full, float("-inf")) + mask  # float mask: blocked pairs get -inf


class MultiHeadAttention(nn.Module):
    """Multi-head attention, batch first: h heads of size d_model / h, then an output projection.

    forward(query, key=None, value=None, *, padding=None, causal=False, mask=None,
    need_weights=True) takes tensors of shape (batch, tokens, d_model) (key and value default to
    query: self-attention) and returns (output, weights) with weights of shape
    (batch, heads, L_q, L_k), or None with need_weights=False (faster: see `attention`).
    `padding` is a (batch, L_k) bool tensor (True = real token, see `padding_mask`); `causal`
    lets each query, the last L_q of the L_k positions, see its own and earlier positions;
    `mask` is any extra mask broadcastable to (batch, heads, L_q, L_k). In training mode,
    `dropout` zeroes attention weights at random.
    """

    def __init__(self, d_model: int, n_heads: int, *, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, d_model) -> (batch, heads, tokens, d_head)."""
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.n_heads, self.d_head).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, heads, tokens, d_head) -> (batch, tokens, d_model): the heads side by side."""
        batch, _, tokens, _ = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, self.d_model)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None,
                value: torch.Tensor | None = None, *, padding: torch.Tensor | None = None,
                causal: bool = False, mask: torch.Tensor | None = None,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = query if key is None else key
        value = key if value is None else value
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.ndim != 3 or x.shape[-1] != self.d_model:
                raise ValueError(f"{name} must have shape (batch, tokens, {self.d_model}), "
                                 f"got {tuple(x.shape)}")
        if padding is not None and padding.shape != key.shape[:2]:
            raise ValueError(f"padding must have shape (batch, L_k) = {tuple(key.shape[:2])}, "
                             f"got {tuple(padding.shape)}")
        q = self.split_heads(self.q_proj(query))  # (batch, heads, L_q, d_head)
        k = self.split_heads(self.k_proj(key))    # (batch, heads, L_k, d_head)
        v = self.split_heads(self.v_proj(value))
        full = combine_masks(q.shape[2], k.shape[2], padding=padding, causal=causal, mask=mask,
                             device=q.device)
        out, weights = attention(q, k, v, full, dropout_p=self.dropout if self.training else 0.0,
                                 need_weights=need_weights)
        return self.out_proj(self.merge_heads(out)), weights


@torch.no_grad()
def copy_from_torch(mine: MultiHeadAttention, theirs: nn.MultiheadAttention) -> MultiHeadAttention:
    """Copy the weights of a ``torch.nn.MultiheadAttention`` into `mine` (same size and heads).

    PyTorch stores the three input projections stacked in one (3·d_model, d_model) matrix,
    ``in_proj_weight``, in the order query, key, value.
    """
    if (theirs.embed_dim, theirs.num_heads) != (mine.d_model, mine.n_heads):
        raise ValueError(f"size mismatch: torch module has d_model={theirs.embed_dim}, "
                         f"heads={theirs.num_heads}; ours has {mine.d_model}, {mine.n_heads}")
    if theirs.in_proj_weight is None:
        raise ValueError("the torch module uses separate kdim/vdim projections; not supported")
    for i, proj in enumerate((mine.q_proj, mine.k_proj, mine.v_proj)):
        proj.weight.copy_(theirs.in_proj_weight.chunk(3)[i])
        if proj.bias is not None:
            proj.bias.copy_(theirs.in_proj_bias.chunk(3)[i])
    mine.out_proj.weight.copy_(theirs.out_proj.weight)
    if mine.out_proj.bias is not None:
        mine.out_proj.bias.copy_(theirs.out_proj.bias)
    return mine


def sinusoidal_positions(n: int, d: int, *, base: float = 10000.0) -> torch.Tensor:
    """(n, d) sinusoidal encodings of "Attention Is All You Need":

    PE[pos, 2i] = sin(pos / base^(2i/d)),  PE[pos, 2i+1] = cos(pos / base^(2i/d)).
    """
    if d % 2:
        raise ValueError(f"d must be even (sine/cosine pairs), got {d}")
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.float()


def rope_angles(positions: int | Sequence[int] | torch.Tensor, d: int, *,
                base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(positions), d/2) rotation angles pos · θ_i with θ_i = base^(-2i/d) (RoPE).

    `positions` is a number of tokens n (positions 0..n-1) or explicit positions. The angles are
    computed on the positions' device, in float64 (float32 on MPS, which has no float64), and
    returned as `dtype`.
    """
    if d % 2:
        raise ValueError(f"d must be even (RoPE rotates pairs of features), got {d}")
    if isinstance(positions, int):
        positions = torch.arange(positions)
    positions = torch.as_tensor(positions)
    wide = torch.float32 if positions.device.type == "mps" else torch.float64
    theta = base ** (-torch.arange(0, d, 2, dtype=wide, device=positions.device) / d)
    return (positions.to(wide)[:, None] * theta).to(dtype)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs (x[i], x[i + d/2]) of x (..., n, d) by angles (n, d/2).

    This is the "rotate half" pairing of Llama and Hugging Face models; the RoFormer paper pairs
    neighbours (x[2i], x[2i+1]), which is the same rotation on permuted features.
    """
    d = x.shape[-1]
    if d % 2 or angles.shape[-1] != d // 2 or angles.shape[-2] != x.shape[-2]:
        raise ValueError(f"angles must have shape (n, d/2) = ({x.shape[-2]}, {d // 2}) for x of "
                         f"shape {tuple(x.shape)}, got {tuple(angles.shape)}")
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
