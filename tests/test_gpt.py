"""Our GPT equals Hugging Face's GPT2LMHeadModel weight for weight; its KV cache equals a full pass."""

import companion  # noqa: F401  (first: offline Hugging Face cache)
import pytest
import torch
from helpers import perturbed
from transformers import GPT2LMHeadModel

import companion.gpt
from companion.attention import MultiHeadAttention, attention
from companion.gpt import GPT, GPTConfig, to_hf_gpt2

CONFIG = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(config: GPTConfig = CONFIG, seed: int = 0) -> GPT:
    """A GPT whose every weight (LayerNorms and biases too) is random, so a misplaced one shows."""
    torch.manual_seed(seed)
    return perturbed(GPT(config))


def test_logits_and_loss_match_hugging_face():
    model = make_model()
    hf = to_hf_gpt2(model)
    ids = torch.randint(0, CONFIG.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    ours, theirs = model(ids, labels=ids), hf(input_ids=ids, labels=ids)
    assert torch.allclose(ours.logits, theirs.logits, atol=1e-5)
    assert torch.allclose(ours.loss, theirs.loss, atol=1e-5)
    assert ours.loss.item() > 1.0  # a random model: far from zero, so the comparison means something


def test_loss_shifts_labels_inside_and_ignores_minus_100():
    model = make_model()
    hf = to_hf_gpt2(model)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, 5:] = -100
    ours, theirs = model(ids, labels=labels), hf(input_ids=ids, labels=labels)
    assert torch.allclose(ours.loss, theirs.loss, atol=1e-5)
    # by hand: position t is scored on token t + 1, skipped where the label is -100
    logp = ours.logits.log_softmax(-1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(11) if labels[b, t + 1] != -100]
    assert torch.allclose(ours.loss, torch.stack(terms).mean(), atol=1e-5)


def test_right_padding_mask_matches_hugging_face_on_real_tokens():
    model = make_model()
    hf = to_hf_gpt2(model)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    ours = model(ids, attention_mask=mask).logits
    theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)
    assert torch.isfinite(ours).all()
    # padding tokens hidden by the mask do not change the real positions
    other = ids.clone()
    other[1, 9:] = 0
    assert torch.allclose(model(other, attention_mask=mask).logits[real], ours[real], atol=1e-5)


def test_left_padding_matches_hugging_face_and_works_with_the_cache():
    model = make_model()
    hf = to_hf_gpt2(model)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # the first padding query sees no real key: it must not turn into NaN
    ours = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours[real], hf(input_ids=ids, attention_mask=mask).logits[real], atol=1e-5)
    first = model(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
    rest = model(ids[:, 7:], attention_mask=mask, cache=first.cache)
    assert torch.allclose(torch.cat([first.logits, rest.logits], dim=1)[real], ours[real], atol=1e-5)


def test_kv_cache_equals_full_forward():
    model = make_model()
    ids = torch.randint(0, CONFIG.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    full = model(ids).logits
    out = model(ids[:, :10], use_cache=True)  # prefill 10 tokens, then a chunk of 4, then one by one
    steps = [out.logits]
    out = model(ids[:, 10:14], cache=out.cache, use_cache=True)
    steps.append(out.logits)
    for t in range(14, 24):
        out = model(ids[:, t:t + 1], cache=out.cache, use_cache=True)
        steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    k, v = out.cache[0]
    assert len(out.cache) == CONFIG.n_layer
    assert k.shape == v.shape == (2, CONFIG.n_head, 24, CONFIG.n_embd // CONFIG.n_head)


def test_tied_embeddings_and_parameter_count_match_hugging_face():
    model = make_model()
    hf = to_hf_gpt2(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_parameters() == hf.num_parameters()
    c = CONFIG  # 12 d^2 + 13 d per block, embeddings, final LayerNorm
    expected = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * (12 * c.n_embd**2 + 13 * c.n_embd) + 2 * c.n_embd
    assert model.num_parameters() == expected


def test_saved_in_hugging_face_format_reloads(tmp_path):
    model = make_model()
    to_hf_gpt2(model).save_pretrained(tmp_path)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, CONFIG.vocab_size, (1, 8), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(reloaded(input_ids=ids).logits, model(ids).logits, atol=1e-5)


def test_too_long_input_and_biasless_conversion_raise():
    model = make_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, CONFIG.block_size + 1, dtype=torch.long))
    nobias = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8, bias=False))
    assert nobias(torch.zeros(1, 8, dtype=torch.long)).logits.shape == (1, 8, 50)
    with pytest.raises(ValueError, match="bias=True"):
        to_hf_gpt2(nobias)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=10, n_embd=30, n_head=4)


def test_a_few_steps_of_training_fit_a_repeated_sequence():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.1))
    batch = {"input_ids": torch.arange(16).repeat(4, 1) % 20, "labels": torch.arange(16).repeat(4, 1) % 20}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(**batch).loss.item()
    for _ in range(40):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.5 and loss.item() < 0.5


def _from_scratch(*args, **kwargs):
    """companion.attention.attention, forced onto the from-scratch formula (weights materialised)."""
    return attention(*args, **{**kwargs, "need_weights": True})


def test_attention_is_companion_attention_and_the_fast_path_equals_the_formula(monkeypatch):
    model = make_model()
    assert all(isinstance(block.attn, MultiHeadAttention) for block in model.transformer.h)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: the first queries of row 1 see no key at all
    fast = model(ids, attention_mask=mask).logits
    first = model(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
    fast_cached = model(ids[:, 7:], attention_mask=mask, cache=first.cache).logits
    monkeypatch.setattr(companion.gpt, "attention", _from_scratch)
    assert torch.allclose(model(ids, attention_mask=mask).logits, fast, atol=1e-5)
    slow_first = model(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
    slow_cached = model(ids[:, 7:], attention_mask=mask, cache=slow_first.cache).logits
    assert torch.allclose(slow_cached, fast_cached, atol=1e-5)
    # the block's attention is MultiHeadAttention.forward with causal=True, weights and all
    attn, x = model.transformer.h[0].attn, torch.randn(2, 9, CONFIG.n_embd)
    out, (k, v) = attn(x, None, None)  # no padding, no cache: plain causal attention
    reference, weights = MultiHeadAttention.forward(attn, x, causal=True)
    assert torch.allclose(out, reference, atol=1e-6) and weights.shape == (2, CONFIG.n_head, 9, 9)
    assert torch.allclose(k, attn.split_heads(attn.k_proj(x)))


def test_attention_dropout_works_in_training_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # only the attention weights are dropped now
    ids = torch.arange(16)[None] % 20
    assert not torch.allclose(model(ids).logits, model(ids).logits)  # training mode: random
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)
