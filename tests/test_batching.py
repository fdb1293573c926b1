"""companion.batching: batched decoding gives each request what it gets alone, and requests leave
a batch (done, cancelled, timed out) without disturbing the others."""

from __future__ import annotations

import pytest
import torch

from companion.batching import Engine, Settings

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain gravity to a child in one sentence, with an example from daily life.", "Hi",
           "List three colours.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def smol():
    from companion.instruct import load_model

    return load_model("smollm2")


@pytest.fixture(scope="module")
def prompts(smol):
    _, tokenizer = smol
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                          add_generation_prompt=True, return_dict=False)
            for p in PROMPTS]


@pytest.fixture
def engine(smol):
    model, tokenizer = smol
    engine = Engine(model, tokenizer, max_batch=8, wait_ms=200).start()
    yield engine
    engine.stop()


def alone(smol, ids: list[int], n: int) -> list[int]:
    """transformers' greedy generate on the request alone, without its end-of-sequence token."""
    model, _ = smol
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    return out[:next((i for i, t in enumerate(out) if t in eos), len(out))]


def test_greedy_in_a_batch_equals_greedy_alone(smol, prompts, engine):
    # prompts of 6 lengths: the shorter ones are left-padded; max_new_tokens differ, so
    # requests leave the batch (and its KV cache) at different steps
    lengths = [3, 8, 5, 12, 2, 6]
    requests = [engine.submit(ids, Settings(max_new_tokens=n)) for ids, n in zip(prompts, lengths)]
    results = [r.result(120) for r in requests]
    assert max(engine.batch_sizes) == len(prompts)
    for ids, n, result in zip(prompts, lengths, results):
        assert result.token_ids == alone(smol, ids, n)
        assert result.finish_reason == ("length" if len(result.token_ids) == n else "stop")
        assert result.prompt_tokens == len(ids) and result.completion_tokens == len(result.token_ids)
    assert results[3].text.strip() and results[3].finish_reason == "stop"  # "Hi" is answered in 9


def test_requests_join_a_running_batch_between_steps(smol, prompts, engine):
    # "Hi" is decoding when a longer prompt joins (the running rows are padded), then a shorter
    # one (its cache is padded); each gets what it gets alone
    joined = {}

    def on_event(event):
        n = len(first.tokens)
        if n in (2, 6) and n not in joined:
            joined[n] = engine.submit(prompts[2 if n == 2 else 4], Settings(max_new_tokens=8))

    first = engine.submit(prompts[3], Settings(max_new_tokens=12), on_event)
    assert first.result(60).token_ids == alone(smol, prompts[3], 12)
    assert joined[2].result(60).token_ids == alone(smol, prompts[2], 8)
    assert joined[6].result(60).token_ids == alone(smol, prompts[4], 8)
    assert max(engine.batch_sizes) == 3 and engine.batch_sizes[0] == 1


def test_events_carry_the_text_token_by_token(prompts, engine):
    events = []
    result = engine.submit(prompts[1], Settings(max_new_tokens=6), events.append).result(60)
    assert [e.finish_reason for e in events] == [None] * 6 + ["length"]
    assert "".join(e.text for e in events) == result.text
    assert sum((e.token_ids for e in events), []) == result.token_ids


def test_sampling_is_reproducible_with_a_seed_alone_or_in_a_batch(prompts, engine):
    settings = Settings(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=7)
    first = engine.submit(prompts[0], settings).result(60).token_ids
    together = [engine.submit(p, settings) for p in prompts[:3]]
    assert together[0].result(60).token_ids == first
    # a tiny nucleus keeps only the most likely token: greedy decoding
    tiny = engine.submit(prompts[0], Settings(max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=1))
    greedy = engine.submit(prompts[0], Settings(max_new_tokens=6))
    assert tiny.result(60).token_ids == greedy.result(60).token_ids


def test_a_cancelled_request_leaves_the_batch_and_the_others_go_on(smol, prompts, engine):
    doomed = engine.submit(prompts[2], Settings(max_new_tokens=200), lambda e: doomed.cancel())
    other = engine.submit(prompts[0], Settings(max_new_tokens=6))
    assert doomed.result(60).finish_reason == "cancelled" and len(doomed.tokens) == 1
    assert other.result(60).token_ids == alone(smol, prompts[0], 6)
    assert engine.finished["cancelled"] == 1


def test_timeouts(prompts, engine):
    expired = engine.submit(prompts[0], Settings(max_new_tokens=8, timeout=0))
    assert expired.result(60).finish_reason == "timeout" and expired.tokens == []
    slow = engine.submit(prompts[2], Settings(max_new_tokens=200, timeout=0.5)).result(60)
    assert slow.finish_reason == "timeout" and 0 < len(slow.token_ids) < 200


def test_a_failing_batch_does_not_stop_the_worker(smol, prompts, engine):
    bad = engine.submit([10**7], Settings(max_new_tokens=4))  # not a token id of the model
    assert bad.result(60).finish_reason.startswith("error")
    assert engine.submit(prompts[0], Settings(max_new_tokens=3)).result(60).token_ids == alone(
        smol, prompts[0], 3)


def test_bad_arguments(smol, engine):
    model, tokenizer = smol
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.submit([], Settings())
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        engine.submit([1, 2], Settings(max_new_tokens=0))
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        Engine(model, tokenizer, max_batch=0)
