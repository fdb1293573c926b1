"""Sampling filters, cached vs uncached generation, and greedy decoding against Hugging Face."""

import companion  # noqa: F401  (first: offline Hugging Face cache)
import pytest
import torch
from helpers import perturbed

from companion.generation import (apply_temperature, generate, sample_next_token, top_k_filter,
                                  top_p_filter)
from companion.gpt import GPT, GPTConfig, to_hf_gpt2

CONFIG = GPTConfig(vocab_size=64, block_size=24, n_layer=2, n_head=2, n_embd=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed: int = 0) -> GPT:
    """A random GPT with spread-out logits (weights perturbed) so sampling has real choices."""
    torch.manual_seed(seed)
    return perturbed(GPT(CONFIG))


def prompt(batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(7))


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 2.0]])
    for k in range(1, 7):
        kept = torch.isfinite(top_k_filter(logits, k))
        assert kept.sum().item() == k
        # what is kept is never below what is dropped
        assert logits[kept].min() >= logits[~kept].max() if k < 6 else True
    assert torch.isfinite(top_k_filter(logits, 100)).all()


def test_top_p_keeps_the_smallest_set_with_enough_mass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 30, generator=g) * 2
    for p in (0.05, 0.3, 0.5, 0.9, 0.999, 1.0):
        kept = torch.isfinite(top_p_filter(logits, p))
        probs = logits.softmax(-1)
        for row in range(50):
            mass = probs[row][kept[row]]
            assert mass.sum() >= p - 1e-6  # enough mass...
            assert (mass.sum() - mass.min()) < p  # ...and no kept token could be dropped
            if (~kept[row]).any():
                assert mass.min() >= probs[row][~kept[row]].max()  # the most likely ones
    example = top_p_filter(torch.tensor([[2.0, 1.0, 0.5, -1.0]]), 0.8)  # probs 0.610, 0.224, ...
    assert torch.isfinite(example).tolist() == [[True, True, False, False]]


def test_temperature_and_sampling_frequencies():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    assert torch.allclose(apply_temperature(logits, 0.5), logits * 2)
    assert apply_temperature(logits, 1e-3).softmax(-1)[0, 0] > 0.999  # temperature -> 0: one-hot
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next_token(logits.expand(1000, 4), generator=g) for _ in range(20)])
    freq = torch.bincount(draws.flatten(), minlength=4) / draws.numel()
    assert torch.allclose(freq, logits.softmax(-1)[0], atol=0.01)
    draws = sample_next_token(logits.expand(20000, 4), top_k=2, generator=g)
    freq = torch.bincount(draws, minlength=4) / draws.numel()
    assert freq[1] == freq[2] == 0
    assert abs(freq[0] - torch.tensor([1.0, 0.5]).softmax(0)[0]) < 0.01  # renormalised over the two


@pytest.mark.parametrize("kwargs", [dict(greedy=True), dict(temperature=0.8),
                                    dict(top_k=5), dict(top_p=0.7, temperature=1.3)])
def test_cached_and_uncached_generation_give_identical_tokens(kwargs):
    model = make_model()
    outs = [generate(model, prompt(), 30, use_cache=use_cache,
                     generator=torch.Generator().manual_seed(3), **kwargs) for use_cache in (True, False)]
    assert outs[0].shape == (2, 35)  # 30 new tokens: past block_size=24, the window slides
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][:, :5], prompt())
    if not kwargs.get("greedy"):  # sampling really samples: another seed, other tokens
        other = generate(model, prompt(), 30, generator=torch.Generator().manual_seed(4), **kwargs)
        assert not torch.equal(other, outs[0])


def test_temperature_near_zero_equals_greedy():
    model = make_model()
    greedy = generate(model, prompt(), 15, greedy=True)
    cold = generate(model, prompt(), 15, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, cold)


def test_greedy_equals_hugging_face_generate():
    model = make_model()
    hf = to_hf_gpt2(model)
    ids = prompt(batch=2, length=4)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    ours = generate(model, ids, 12, greedy=True)
    assert torch.equal(ours, theirs)


def test_eos_stops_and_pads_finished_rows():
    model = make_model()
    free = generate(model, prompt(), 12, greedy=True)
    eos = int(free[0, 8])  # row 0 emits this id at step 4: make it the end-of-sequence id
    out = generate(model, prompt(), 12, greedy=True, eos_token_id=eos)
    assert torch.equal(out[0, :9], free[0, :9])
    assert (out[0, 9:] == eos).all()
    if not (out[1, 5:] == eos).any():  # row 1 never ends: generation ran all 12 steps
        assert out.shape == (2, 17) and torch.equal(out[1], free[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(make_model(), prompt(), 3, **kwargs)


def test_greedy_ignores_temperature_and_long_prompts_raise():
    model = make_model()
    assert generate(model, prompt(), 3, greedy=True, temperature=0.0).shape == (2, 8)
    with pytest.raises(ValueError, match="crop it"):
        generate(model, torch.zeros(1, CONFIG.block_size + 1, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="batch"):
        generate(model, torch.zeros(5, dtype=torch.long), 3)
