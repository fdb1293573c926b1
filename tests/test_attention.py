"""Tests of companion.attention against PyTorch's and Hugging Face's reference implementations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import (
    MultiHeadAttention,
    apply_rope,
    attention,
    causal_mask,
    combine_masks,
    copy_from_torch,
    padding_mask,
    rope_angles,
    scaled_dot_product_attention,
    sinusoidal_positions,
)


def _qkv(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=dtype) for _ in range(3))


# --- scaled dot-product attention -----------------------------------------------------------

def test_matches_torch_without_mask():
    q, k, v = _qkv(2, 3, 7, 16)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-12)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64))


def test_matches_hand_computed_formula():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    v = torch.tensor([[10.0], [20.0]])
    out, weights = scaled_dot_product_attention(q, k, v)
    scores = torch.tensor([[1.0, 2.0], [2.0, 0.0]]) / math.sqrt(2)
    expected = scores.exp() / scores.exp().sum(-1, keepdim=True)
    assert torch.allclose(weights, expected)
    assert torch.allclose(out, expected @ v)


def test_worked_4x4_example_saturates():
    x = torch.arange(1, 17, dtype=torch.float64).reshape(4, 4)
    out, weights = scaled_dot_product_attention(x, x, x)
    # consecutive scores of query i differ by sum(x_i) * 4 / 2 = 20, 52, 84, 116
    assert torch.all(weights[:, -1] > 1 - 3e-9)
    assert weights[0, -1].item() == pytest.approx(1 / (1 + math.exp(-20) + math.exp(-40) + math.exp(-60)))
    assert torch.allclose(out, x[-1].expand(4, 4), atol=1e-6)


def test_matches_torch_with_causal_mask():
    q, k, v = _qkv(2, 4, 9, 8, seed=1)
    out, weights = scaled_dot_product_attention(q, k, v, mask=causal_mask(9))
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-12)
    assert torch.all(weights.triu(1) == 0)


def test_matches_torch_with_padding_mask():
    q, k, v = _qkv(3, 2, 6, 8, seed=2)
    pad = padding_mask([6, 4, 1], 6)
    mask = pad[:, None, None, :]
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-12)
    assert torch.all(weights[1, :, :, 4:] == 0) and torch.all(weights[2, :, :, 1:] == 0)
    assert torch.allclose(weights[2, :, :, 0], torch.ones(2, 6, dtype=torch.float64))


def test_matches_torch_with_causal_and_padding_mask():
    q, k, v = _qkv(2, 2, 5, 4, seed=3)
    mask = padding_mask([5, 3])[:, None, None, :] & causal_mask(5)
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-12)


def test_float_mask_is_added_like_torch():
    q, k, v = _qkv(1, 5, 8, seed=4)
    bias = torch.randn(5, 5, dtype=torch.float64)
    out, _ = scaled_dot_product_attention(q, k, v, mask=bias)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias), atol=1e-12)


def test_fully_masked_query_gives_zeros_like_torch():
    q, k, v = _qkv(1, 3, 4, seed=5)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-12)
    assert torch.all(weights[0, 1] == 0) and torch.all(out[0, 1] == 0)


def test_gradients_match_torch():
    q, k, v = (t.requires_grad_() for t in _qkv(2, 5, 4, seed=6))
    scaled_dot_product_attention(q, k, v, mask=causal_mask(5))[0].square().sum().backward()
    ours = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v, is_causal=True).square().sum().backward()
    for a, t in zip(ours, (q, k, v)):
        assert torch.allclose(a, t.grad, atol=1e-10)


def test_bad_shapes_raise_clear_errors():
    q = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="same feature size d_k"):
        scaled_dot_product_attention(q, torch.randn(2, 5, 6), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="same number of tokens"):
        scaled_dot_product_attention(q, torch.randn(2, 5, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, q, q, mask=causal_mask(4))
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(5, 5, dtype=torch.long))


# --- the fast path: need_weights=False -------------------------------------------------------

def _fast_path_masks():
    """Every kind of mask the models use, with the (L_q, L_k) of the queries and keys."""
    pad = padding_mask([7, 5, 2], 7)[:, None, None, :]                    # (3, 1, 1, 7)
    no_key = pad & causal_mask(7)
    no_key[1, :, 2] = False                                                 # a fully masked row
    blocked = torch.zeros(7, 7, dtype=torch.float64).masked_fill(~causal_mask(7), float("-inf"))
    blocked[4] = float("-inf")                                              # a fully masked float row
    return {
        "none": (None, 7, 7),
        "padding": (pad, 7, 7),
        "causal and padding": (pad & causal_mask(7), 7, 7),
        "causal after 4 cached keys": (causal_mask(3, n_keys=7), 3, 7),
        "fully masked rows": (no_key, 7, 7),
        "float": (torch.randn(7, 7, dtype=torch.float64), 7, 7),
        "float, fully masked row": (blocked, 7, 7),
    }


@pytest.mark.parametrize("kind", list(_fast_path_masks()))
def test_fast_path_equals_the_formula_with_gradients(kind):
    mask, n_q, n_k = _fast_path_masks()[kind]
    g = torch.Generator().manual_seed(7)
    q = torch.randn(3, 2, n_q, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(3, 2, n_k, 8, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    slow, weights = attention(q, k, v, mask)
    fast, none = attention(q, k, v, mask, need_weights=False)
    assert none is None and weights.shape == (3, 2, n_q, n_k)
    assert torch.allclose(fast, slow, atol=1e-12) and torch.isfinite(fast).all()
    grads = torch.autograd.grad(slow.square().sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad(fast.square().sum(), (q, k, v))):
        assert torch.allclose(a, b, atol=1e-10) and torch.isfinite(b).all()
    if kind.startswith("fully") or kind.endswith("row"):  # no key: output 0, as in the formula
        assert (slow == 0).all(dim=-1).any() and torch.equal(fast == 0, slow == 0)


def test_fast_path_float32_mask_with_float64_inputs_and_dropout():
    q, k, v = _qkv(2, 3, 5, 4, seed=8)
    bias = torch.randn(5, 5)  # float32 mask, float64 queries: the formula promotes, so must we
    assert torch.allclose(attention(q, k, v, bias, need_weights=False)[0],
                          scaled_dot_product_attention(q, k, v, bias)[0], atol=1e-6)
    # On the CPU the fused kernel drops the weights with the same random draws as F.dropout
    torch.manual_seed(0)
    slow, weights = attention(q, k, v, causal_mask(5), dropout_p=0.3)
    torch.manual_seed(0)
    fast, _ = attention(q, k, v, causal_mask(5), dropout_p=0.3, need_weights=False)
    assert torch.allclose(fast, slow, atol=1e-12)
    kept = weights[causal_mask(5).expand_as(weights)]
    assert (kept == 0).any() and not torch.allclose(slow, attention(q, k, v, causal_mask(5))[0])


def test_fast_path_raises_the_formulas_errors():
    q = torch.randn(2, 5, 8)
    for need_weights in (True, False):
        with pytest.raises(ValueError, match="same feature size d_k"):
            attention(q, torch.randn(2, 5, 6), torch.randn(2, 5, 8), need_weights=need_weights)
        with pytest.raises(ValueError, match="same number of tokens"):
            attention(q, q, torch.randn(2, 4, 8), need_weights=need_weights)
        with pytest.raises(ValueError, match="does not broadcast"):
            attention(q, q, q, causal_mask(4), need_weights=need_weights)
        with pytest.raises(TypeError, match="bool"):
            attention(q, q, q, torch.ones(5, 5, dtype=torch.long), need_weights=need_weights)


def test_combine_masks():
    pad = padding_mask([4, 2], 4)
    assert combine_masks(4, 4) is None
    assert torch.equal(combine_masks(2, 4, causal=True), causal_mask(2, n_keys=4))
    assert combine_masks(1, 4, causal=True) is None  # one query, the last position, sees all keys
    both = combine_masks(2, 4, padding=pad.long(), causal=True)  # a Hugging Face 0/1 mask works
    assert both.shape == (2, 1, 2, 4) and torch.equal(both, pad[:, None, None, :] & causal_mask(2, n_keys=4))
    bias = torch.randn(2, 4)
    added = combine_masks(2, 4, padding=pad, mask=bias)
    assert torch.equal(added[1, 0, :, :2], bias[:, :2]) and torch.isinf(added[1, 0, :, 2:]).all()
    with pytest.raises(ValueError, match="padding"):
        combine_masks(2, 5, padding=pad)
    with pytest.raises(ValueError, match="fewer than"):
        combine_masks(5, 4, causal=True)


# --- masks ------------------------------------------------------------------------------------

def test_causal_mask_values():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(6).sum().item() == 21
    with pytest.raises(ValueError):
        causal_mask(0)


def test_padding_mask_values():
    pad = padding_mask([3, 1, 0], 4)
    assert pad.dtype == torch.bool and pad.shape == (3, 4)
    assert pad.tolist() == [[True, True, True, False], [True, False, False, False], [False] * 4]
    assert padding_mask(torch.tensor([2, 5])).shape == (2, 5)
    hf_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert torch.equal(padding_mask([3, 1], 4), hf_mask.bool())
    with pytest.raises(ValueError, match="shorter"):
        padding_mask([3, 5], 4)
    with pytest.raises(ValueError):
        padding_mask([-1, 2])


# --- multi-head attention ---------------------------------------------------------------------

def _pair(d_model=16, heads=4, bias=True, seed=0):
    torch.manual_seed(seed)
    theirs = nn.MultiheadAttention(d_model, heads, batch_first=True, bias=bias).eval()
    with torch.no_grad():  # torch initialises its biases to zero: make them count
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mine = copy_from_torch(MultiHeadAttention(d_model, heads, bias=bias), theirs)
    return mine, theirs


@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_torch_after_weight_copy(bias):
    mine, theirs = _pair(bias=bias)
    x = torch.randn(3, 7, 16)
    out, weights = mine(x)
    ref, ref_weights = theirs(x, x, x, average_attn_weights=False)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(weights, ref_weights, atol=1e-6)


def test_mha_cross_attention_matches_torch():
    mine, theirs = _pair(seed=1)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 8, 16)
    assert torch.allclose(mine(q, kv, kv)[0], theirs(q, kv, kv)[0], atol=1e-6)


def test_mha_masks_match_torch():
    mine, theirs = _pair(seed=2)
    x = torch.randn(3, 6, 16)
    pad = padding_mask([6, 4, 2], 6)
    out, weights = mine(x, padding=pad, causal=True)
    # torch's masks are the other way round: True = NOT allowed
    ref, _ = theirs(x, x, x, key_padding_mask=~pad, attn_mask=~causal_mask(6), need_weights=False)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.all(weights[1, :, :, 4:] == 0)
    assert torch.all(weights.triu(1) == 0)
    # an extra float mask is combined with the boolean ones
    bias = torch.randn(6, 6)
    out2, _ = mine(x, padding=pad, mask=bias)
    float_pad = torch.zeros(3, 6).masked_fill(~pad, float("-inf"))  # same mask type as attn_mask
    ref2, _ = theirs(x, x, x, key_padding_mask=float_pad, attn_mask=bias, need_weights=False)
    assert torch.allclose(out2, ref2, atol=1e-6)


def test_mha_fast_path_dropout_and_causal_after_a_cache():
    mine, _ = _pair(seed=3)
    x = torch.randn(3, 6, 16)
    pad = padding_mask([6, 4, 2], 6)
    out, weights = mine(x, padding=pad, causal=True)
    fast, none = mine(x, padding=pad, causal=True, need_weights=False)
    assert none is None and torch.allclose(fast, out, atol=1e-6)
    # causal queries are the last L_q of the L_k positions: the last 2 rows of full attention
    q_proj_of_last = mine(x[:, 4:], x, x, causal=True)[0]
    assert torch.allclose(q_proj_of_last, mine(x, causal=True)[0][:, 4:], atol=1e-6)
    # dropout on the attention weights: random in training mode, off in eval mode
    drop = MultiHeadAttention(16, 4, dropout=0.5)
    drop.load_state_dict(mine.state_dict())
    drop.train()
    for need_weights in (True, False):
        a, b = drop(x, need_weights=need_weights)[0], drop(x, need_weights=need_weights)[0]
        assert not torch.allclose(a, b)
    assert torch.allclose(drop.eval()(x, need_weights=False)[0], mine(x)[0], atol=1e-6)
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(16, 4, dropout=1.0)


def test_mha_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(batch, tokens, 8\)"):
        mha(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="padding"):
        mha(torch.randn(2, 5, 8), padding=padding_mask([5, 3, 1]))
    with pytest.raises(ValueError, match="size mismatch"):
        copy_from_torch(mha, nn.MultiheadAttention(8, 4, batch_first=True))


# --- positions ----------------------------------------------------------------------------------

def test_sinusoidal_known_values():
    pe = sinusoidal_positions(50, 8)
    assert pe.shape == (50, 8)
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 4))
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0))
    assert pe[1, 1].item() == pytest.approx(math.cos(1.0))
    assert pe[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 8)))
    assert pe[7, 5].item() == pytest.approx(math.cos(7 / 10000 ** (4 / 8)))
    assert torch.allclose(pe.square().sum(-1), torch.full((50,), 4.0))  # sin² + cos² per pair
    with pytest.raises(ValueError):
        sinusoidal_positions(4, 7)


def test_rope_relative_position_property():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    angles = rope_angles(200, 64, dtype=torch.float64)

    def score(m, n):
        return apply_rope(q.expand(200, 64), angles)[m] @ apply_rope(k.expand(200, 64), angles)[n]

    assert score(3, 10) == pytest.approx(score(103, 110).item(), abs=1e-10)
    assert score(0, 5) == pytest.approx(score(190, 195).item(), abs=1e-10)
    assert score(0, 0) == pytest.approx((q @ k).item(), abs=1e-12)
    assert abs(score(3, 10) - score(3, 11)) > 1e-3  # but it does depend on the offset


def test_rope_preserves_norms_and_position_zero():
    x = torch.randn(2, 4, 10, 32)
    y = apply_rope(x, rope_angles(10, 32))
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[..., 0, :], x[..., 0, :])


def test_rope_matches_hugging_face_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    angles = rope_angles(12, 16)
    emb = torch.cat((angles, angles), dim=-1)[None]  # HF repeats the d/2 angles: (1, n, d)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, emb.cos(), emb.sin())
    assert torch.allclose(apply_rope(q, angles), ref_q, atol=1e-6)
    assert torch.allclose(apply_rope(k, angles), ref_k, atol=1e-6)


def test_rope_explicit_positions_and_bad_input():
    assert torch.equal(rope_angles([5, 6], 8), rope_angles(7, 8)[5:])
    assert rope_angles(3, 8).dtype == torch.float32
    assert rope_angles(3, 8, dtype=torch.float64)[2, 1].item() == pytest.approx(2 * 10000 ** (-2 / 8), abs=1e-15)
    with pytest.raises(ValueError):
        rope_angles(4, 7)
    with pytest.raises(ValueError, match="angles"):
        apply_rope(torch.randn(5, 8), rope_angles(4, 8))


def test_causal_mask_for_queries_after_cached_keys():
    # 2 new queries after 3 cached tokens: the rows 3 and 4 of the 5 x 5 triangle
    assert torch.equal(causal_mask(2, n_keys=5), causal_mask(5)[3:])
    assert torch.equal(causal_mask(4, n_keys=4), causal_mask(4))
    with pytest.raises(ValueError, match="fewer than the n=3 queries"):
        causal_mask(3, n_keys=2)


def test_masks_and_rope_are_built_on_the_inputs_device():
    # the "meta" device stands in for a GPU: a tensor made on the CPU by mistake cannot mix with it
    mha = MultiHeadAttention(8, 2).to("meta")
    x = torch.empty(2, 5, 8, device="meta")
    padding = torch.ones(2, 5, dtype=torch.bool, device="meta")
    extra = torch.zeros(5, 5, device="meta")  # a float mask: the boolean part is turned into -inf
    out, weights = mha(x, padding=padding, causal=True, mask=extra)
    assert out.device.type == weights.device.type == "meta"
    out, _ = mha(x[:, 3:], x, x, padding=padding, causal=True, need_weights=False)  # fast path
    assert out.device.type == "meta" and out.shape == (2, 2, 8)
    angles = rope_angles(torch.arange(4, device="meta"), 8)
    assert angles.device.type == "meta" and angles.shape == (4, 4) and angles.dtype == torch.float32
    assert causal_mask(2, n_keys=3, device="meta").device.type == "meta"
