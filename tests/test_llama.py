"""companion.llama against transformers: same logits, same greedy tokens, cache, batching, GQA."""

import pytest
import torch
from helpers import perturbed
from torch import nn

from companion.finetune import SMOLLM2
from companion.llama import LlamaConfig, LlamaModel, from_hf_model, from_pretrained, generate, stream

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def smollm2(one_thread):
    """(ours, transformers' model, tokenizer) for SmolLM2-135M-Instruct, loaded once."""
    import companion

    companion.resources.require("smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(SMOLLM2).eval()
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    return from_pretrained(SMOLLM2), hf, tokenizer


def tiny_hf(**overrides):
    """A random 2-layer transformers Llama with 4 query and 2 key/value heads, norms perturbed."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = HFConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, rms_norm_eps=1e-6, **overrides)
    config.rope_parameters = {"rope_theta": 500.0, "rope_type": "default"}
    return perturbed(LlamaForCausalLM(config))


def tiny(vocab_size: int = 100) -> LlamaModel:
    """A random LlamaModel small enough for the argument checks and the streaming tests."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=24, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=4, max_position_embeddings=32)
    return perturbed(LlamaModel(config), scale=0.5)


def chat_ids(tokenizer, question: str) -> torch.Tensor:
    """(1, n) ids of a one-turn chat ending with the assistant's header."""
    chat = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


def left_padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of `texts`, padded on the left."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    return batch["input_ids"], batch["attention_mask"]


# ----------------------------------------------------------------------------- the real SmolLM2


def test_logits_match_transformers(smollm2):
    ours, hf, tokenizer = smollm2
    worst = 0.0
    for text in PROMPTS:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            mine, theirs = ours(ids).logits, hf(ids).logits
        worst = max(worst, (mine - theirs).abs().max().item())
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=0), text
    print(f"max |logit difference| over {len(PROMPTS)} prompts: {worst:.2e}")  # about 4e-5


def test_grouped_query_attention_and_size_match(smollm2):
    ours, hf, _ = smollm2
    c = ours.config
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (9, 3, 64)
    assert c.num_kv_heads == hf.config.num_key_value_heads < hf.config.num_attention_heads
    attn = ours.layers[0].attn
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (3 * 64, 576)
    assert attn.q_proj.weight.shape == (9 * 64, 576)
    assert ours.lm_head.weight is ours.embed_tokens.weight
    assert ours.num_parameters() == hf.num_parameters() == 134_515_008


def test_greedy_generation_matches_transformers_and_streams(smollm2):
    ours, hf, tokenizer = smollm2
    ids = chat_ids(tokenizer, "What is the capital of France?")
    streamed = []
    mine = generate(ours, ids, 20, greedy=True, eos_token_id=tokenizer.eos_token_id,
                    streamer=lambda t: streamed.append(int(t[0])))
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    assert mine.tolist() == theirs.tolist()
    assert streamed == mine[0, ids.shape[1]:].tolist()
    assert len(streamed) >= 5 and "Paris" in tokenizer.decode(streamed)


def test_cache_gives_the_same_logits_and_tokens(smollm2):
    ours, _, tokenizer = smollm2
    ids = tokenizer(PROMPTS[2], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = ours(ids).logits
        cache = ours.new_cache()
        steps = [ours(ids[:, :5], cache=cache).logits]
        steps += [ours(ids[:, t:t + 1], cache=cache).logits for t in range(5, ids.shape[1])]
    assert cache.length == ids.shape[1]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)
    with_cache = generate(ours, ids[:, :6], 8, greedy=True)
    assert with_cache.tolist() == generate(ours, ids[:, :6], 8, greedy=True, use_cache=False).tolist()


def test_left_padded_batch_equals_one_prompt_at_a_time_and_transformers(smollm2):
    ours, hf, tokenizer = smollm2
    texts = ["Hi", PROMPTS[0], PROMPTS[2]]
    ids, mask = left_padded(tokenizer, texts)
    assert not mask[0].all() and mask[:, -1].all()  # really left padded
    n = 10
    batch = generate(ours, ids, n, attention_mask=mask, greedy=True)
    for row, text in enumerate(texts):
        alone = tokenizer(text, return_tensors="pt")["input_ids"]
        assert batch[row, -n:].tolist() == generate(ours, alone, n, greedy=True)[0, -n:].tolist(), text
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id)
    assert batch.tolist() == theirs.tolist()


# ------------------------------------------------------------------------------- small random models


def test_tiny_untied_model_matches_transformers(one_thread):
    hf = tiny_hf()
    ours = from_hf_model(hf)
    assert ours.lm_head.weight is not ours.embed_tokens.weight and ours.config.rope_theta == 500.0
    assert ours.num_parameters() == hf.num_parameters()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=0)


def test_conversion_reports_mismatches(one_thread):
    with pytest.raises(ValueError, match="biases"):
        from_hf_model(tiny_hf(attention_bias=True))
    hf = tiny_hf()
    hf.model.norm.weight = nn.Parameter(torch.ones(5))
    with pytest.raises(ValueError, match=r"shape mismatch for 'norm.weight'.*\(32,\).*\(5,\)"):
        from_hf_model(hf)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=4,
                    num_kv_heads=3, head_dim=2)


def test_padding_is_invisible_and_takes_no_positions(one_thread):
    model = tiny()  # max_position_embeddings=32: 30 padding columns + 3 tokens fit only if pads take none
    ids = torch.tensor([[0] * 30 + [5, 6, 7]])
    mask = torch.tensor([[0] * 30 + [1, 1, 1]])
    with torch.no_grad():
        padded, alone = model(ids, attention_mask=mask).logits, model(ids[:, 30:]).logits
    assert torch.isfinite(padded).all()  # padding queries see no key: zero attention, not NaN
    assert torch.allclose(padded[:, 30:], alone, atol=1e-5, rtol=0)
    out = generate(model, ids, 2, attention_mask=mask, greedy=True)
    assert out[:, 30:].tolist() == generate(model, ids[:, 30:], 2, greedy=True).tolist()


def test_stops_at_eos_per_row_and_pads_with_it(one_thread):
    model = tiny()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generate(model, ids, 8, greedy=True)[:, 3:]
    eos = int(free[0, 2])
    out = generate(model, ids, 8, greedy=True, eos_token_id=eos)[:, 3:]
    for row in range(2):
        hits = (free[row] == eos).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else out.shape[1]
        assert out[row, :stop].tolist() == free[row, :stop].tolist()
        assert (out[row, stop:] == eos).all()


def test_sampling_is_reproducible_with_a_generator(one_thread):
    model = tiny()
    ids = torch.tensor([[1, 2, 3]])
    runs = [generate(model, ids, 6, temperature=0.8, top_k=20, top_p=0.9,
                     generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0].tolist() == runs[1].tolist() and runs[0].shape == (1, 9)
    steps = list(stream(model, ids, 6, generator=torch.Generator().manual_seed(7), temperature=0.8,
                        top_k=20, top_p=0.9))
    assert torch.stack(steps, dim=1).tolist() == runs[0][:, 3:].tolist()


def test_transformers_text_streamer(one_thread, capsys):
    from transformers import AutoTokenizer, TextStreamer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    model = tiny(vocab_size=len(tokenizer))
    ids = tokenizer("Hello", return_tensors="pt")["input_ids"]
    out = generate(model, ids, 5, greedy=True, streamer=TextStreamer(tokenizer, skip_prompt=True))
    assert capsys.readouterr().out.strip() == tokenizer.decode(out[0, ids.shape[1]:]).strip()


@pytest.mark.parametrize("call, message", [
    (lambda m: generate(m, torch.tensor([1, 2, 3]), 2), r"shape \(batch, time\)"),
    (lambda m: generate(m, torch.tensor([[1.0, 2.0]]), 2), "integer ids"),
    (lambda m: generate(m, torch.zeros(1, 0, dtype=torch.long), 2), "empty"),
    (lambda m: generate(m, torch.ones(2, 3, dtype=torch.long), 2, attention_mask=torch.ones(2, 4)),
     r"attention_mask has shape \(2, 4\) but input_ids has \(2, 3\)"),
    (lambda m: generate(m, torch.ones(1, 3, dtype=torch.long), 2, attention_mask=torch.tensor([[1, 1, 0]])),
     "padding must be on the left"),
    (lambda m: generate(m, torch.ones(1, 3, dtype=torch.long), 2, attention_mask=torch.tensor([[1, 0, 1]])),
     "gap"),
    (lambda m: generate(m, torch.ones(1, 30, dtype=torch.long), 5), "longer than max_position_embeddings=32"),
    (lambda m: m(torch.ones(1, 33, dtype=torch.long)), "past max_position_embeddings=32"),
    (lambda m: m(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 2)), r"expected \(2, 3\)"),
    (lambda m: m(torch.ones(2, 3, dtype=torch.long), position_ids=torch.arange(4)), r"expected \(3,\) or"),
    (lambda m: generate(m, torch.ones(1, 3, dtype=torch.long), 2, temperature=0.0), "temperature"),
    (lambda m: generate(m, torch.ones(1, 3, dtype=torch.long), -1), "max_new_tokens"),
])
def test_bad_input_raises_clear_errors(one_thread, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny())
