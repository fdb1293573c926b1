"""Verbalizer scores behind a cached prefix against plain full forwards; contextual calibration."""

import companion  # noqa: F401  (first: offline Hugging Face cache)

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from companion.prompting import calibrate, label_log_probs, prefix_cache

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = [10, 11, 12]
PREFIX = [1, 2, 3, 4, 5]
QUERIES = [[20, 21], [22, 23, 24, 25, 26], [27], [28, 29, 30], [31, 32, 33, 34]]


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=64)).eval()


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=50)).eval()


def one_by_one(model, prefix, queries):
    """The reference: one unpadded forward over prefix + query per query, log-softmax at the end."""
    with torch.no_grad():
        return torch.stack([model(torch.tensor([list(prefix) + q])).logits[0, -1].log_softmax(-1)[LABELS]
                            for q in queries])


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_cached_prefix_and_right_padding_give_the_full_forward(make, batch_size):
    model = make()
    scores = label_log_probs(model, QUERIES, LABELS, prefix=PREFIX, batch_size=batch_size)
    assert scores.shape == (len(QUERIES), len(LABELS))
    torch.testing.assert_close(scores, one_by_one(model, PREFIX, QUERIES), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_no_prefix(make):
    model = make()
    for prefix in (None, []):
        torch.testing.assert_close(label_log_probs(model, QUERIES, LABELS, prefix=prefix, batch_size=2),
                                   one_by_one(model, [], QUERIES), atol=1e-5, rtol=1e-5)


def test_one_cache_serves_many_calls_unchanged():
    model = tiny_llama()
    cache = prefix_cache(model, PREFIX)
    keys = [k.clone() for k, _ in cache]
    first = label_log_probs(model, QUERIES, LABELS, prefix=cache, batch_size=2)
    second = label_log_probs(model, QUERIES[::-1], LABELS, prefix=cache, batch_size=3)
    torch.testing.assert_close(first, second.flip(0))
    assert all(torch.equal(k, before) for (k, _), before in zip(cache, keys))  # the model appended to copies


def test_a_prefix_of_embeddings_is_a_soft_prompt():
    model = tiny_llama()
    embeds = model.get_input_embeddings()(torch.tensor(PREFIX))
    from_ids = label_log_probs(model, QUERIES, LABELS, prefix=prefix_cache(model, PREFIX))
    from_embeds = label_log_probs(model, QUERIES, LABELS, prefix=prefix_cache(model, embeds=embeds))
    torch.testing.assert_close(from_ids, from_embeds)


def test_calibration_makes_the_content_free_input_uniform():
    content_free = torch.tensor([0.2, 0.6])             # unnormalised: 0.25 / 0.75
    torch.testing.assert_close(calibrate(content_free[None], content_free), torch.tensor([[0.5, 0.5]]))
    probs = torch.tensor([[0.3, 0.7], [0.2, 0.8]])
    assert probs.argmax(-1).tolist() == [1, 1]
    assert calibrate(probs, content_free).argmax(-1).tolist() == [0, 1]   # 0.3/0.25 > 0.7/0.75
    torch.testing.assert_close(calibrate(probs, content_free).sum(-1), torch.ones(2))
    several = torch.tensor([[0.2, 0.6], [0.3, 0.5]])    # averaged after normalising each
    torch.testing.assert_close(calibrate(probs, several), calibrate(probs, torch.tensor([0.3125, 0.6875])))


def test_clear_errors():
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="at least one token"):
        label_log_probs(model, [[1], []], LABELS)
    with pytest.raises(ValueError, match="exactly one"):
        prefix_cache(model)
    with pytest.raises(ValueError, match="empty"):
        prefix_cache(model, [])


@pytest.mark.parametrize("bad", [-1, 50, 1000])
def test_label_ids_outside_the_vocabulary_are_an_error(bad):
    # -1 used to score the last vocabulary entry silently (negative indexing).
    with pytest.raises(ValueError, match="not in the vocabulary"):
        label_log_probs(tiny_gpt2(), QUERIES, [10, bad])


def test_a_model_that_drops_the_cache_argument_is_an_error(monkeypatch):
    """A model that silently ignores `cache` would score the queries without their prefix."""
    model = tiny_llama()
    forward = type(model.base_model).forward

    def ignore_cache(self, *args, cache=None, **kwargs):
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.base_model), "forward", ignore_cache)
    with pytest.raises(RuntimeError, match="ignored the prefix cache"):
        label_log_probs(model, QUERIES, LABELS, prefix=PREFIX)
