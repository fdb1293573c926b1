"""companion.speculative: the output is the target's greedy output; caches are cut back; statistics."""

from __future__ import annotations

import pytest
import torch

from companion import speculative as S


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def greedy(model, ids, n, eos=None):
    return model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0,
                          attention_mask=torch.ones_like(ids))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_equal_to_greedy_decoding_on_many_prompts(tiny, k):
    draft = S.layer_draft(tiny, 1)
    gen = torch.Generator().manual_seed(k)
    for _ in range(6):
        ids = torch.randint(1, 97, (1, int(torch.randint(1, 12, (1,), generator=gen))), generator=gen)
        out, stats = S.speculative_generate(tiny, draft, ids, 20, k=k)
        assert out.tolist() == greedy(tiny, ids, 20).tolist()
        assert stats.new_tokens == 20 and stats.accepted <= stats.drafted
        assert stats.target_calls == len(stats.accepted_per_round) <= 20


def test_a_perfect_draft_is_always_accepted(tiny):
    ids = torch.tensor([[5, 6, 7]])
    out, stats = S.speculative_generate(tiny, tiny, ids, 20, k=4)
    assert out.tolist() == greedy(tiny, ids, 20).tolist()
    assert stats.acceptance_rate == 1.0 and stats.target_calls == 4  # 5 tokens per target pass


def test_stops_at_eos_and_at_the_budget(tiny):
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    full = greedy(tiny, ids, 30)[0, 5:].tolist()
    eos = full[7]  # a token the greedy output produces: decoding must stop right after it
    out, _ = S.speculative_generate(tiny, S.layer_draft(tiny, 2), ids, 30, k=4, eos_token_id=eos)
    assert out[0, 5:].tolist() == full[: full.index(eos) + 1]
    short, _ = S.speculative_generate(tiny, S.layer_draft(tiny, 2), ids, 3, k=4)
    assert short[0, 5:].tolist() == full[:3]


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="one sequence"):
        S.speculative_generate(tiny, tiny, torch.tensor([[1, 2], [3, 4]]), 5)
    with pytest.raises(ValueError, match="k and max_new_tokens"):
        S.speculative_generate(tiny, tiny, torch.tensor([[1, 2]]), 5, k=0)
    with pytest.raises(ValueError, match="n_layers"):
        S.layer_draft(tiny, 4)


def test_prompt_lookup_proposals():
    look = S.PromptLookup(max_ngram=2)
    assert look.propose([5, 6, 7, 8, 9, 1, 6, 7], 3) == [8, 9, 1]  # "6 7" matched at position 1
    assert look.propose([5, 6, 7, 8, 9, 1, 6, 7], 10) == [8, 9, 1, 6, 7]  # up to the end
    assert look.propose([1, 2, 3, 4], 3) == []  # nothing repeats
    assert look.propose([1, 2, 9, 3, 2], 2) == [9, 3]  # falls back to one token: "2"
    assert S.PromptLookup(max_ngram=2, min_ngram=2).propose([1, 2, 9, 3, 2], 2) == []
    assert look.propose([4, 4, 4], 2) == [4]  # earliest match: "4 4" at 0, then one token
    assert look.propose([7], 3) == []
    with pytest.raises(ValueError, match="min_ngram"):
        S.PromptLookup(max_ngram=1, min_ngram=2)


@pytest.mark.parametrize("k", [1, 4, 10])
def test_prompt_lookup_equal_to_greedy_decoding_on_many_prompts(tiny, k):
    gen = torch.Generator().manual_seed(10 + k)
    drafted = 0
    for _ in range(8):
        piece = torch.randint(1, 97, (1, int(torch.randint(3, 8, (1,), generator=gen))), generator=gen)
        ids = torch.cat([piece, torch.randint(1, 97, (1, 2), generator=gen), piece], dim=1)  # repetitive
        out, stats = S.speculative_generate(tiny, S.PromptLookup(), ids, 24, k=k)
        assert out.tolist() == greedy(tiny, ids, 24).tolist()
        assert stats.new_tokens == 24 and 0 <= stats.accepted <= stats.drafted
        assert stats.target_calls == len(stats.accepted_per_round) + stats.empty_rounds <= 24
        # each pass keeps its accepted tokens and one of its own (the last pass may be cut short)
        assert stats.target_calls <= stats.new_tokens <= stats.accepted + stats.target_calls
        assert all(0 <= a <= k for a in stats.accepted_per_round)
        drafted += stats.drafted
    assert drafted > 0  # the repeated prompts did give the draft something to copy


def test_prompt_lookup_copies_a_sequence_the_model_repeats(tiny):
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    full = greedy(tiny, ids, 40)  # prompt + the model's own continuation, repeated as the new prompt
    ids = torch.cat([full, full[:, :5]], dim=1)
    out, stats = S.speculative_generate(tiny, S.PromptLookup(), ids, 30, k=8)
    assert out.tolist() == greedy(tiny, ids, 30).tolist()
    assert stats.accepted >= 15 and stats.tokens_per_target_call > 2


def test_prompt_lookup_stops_at_eos(tiny):
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    full = greedy(tiny, ids, 30)[0, 5:].tolist()
    eos = full[7]
    prompt = torch.tensor([[3, 1, 4, 1, 5] + full[:10] + [3, 1, 4, 1, 5]])  # the answer is in the prompt
    want = greedy(tiny, prompt, 30, eos)
    out, _ = S.speculative_generate(tiny, S.PromptLookup(), prompt, 30, k=6, eos_token_id=eos)
    assert out.tolist() == want.tolist()


def test_smollm2_with_an_early_exit_draft_matches_its_greedy_output():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tok, model = AutoTokenizer.from_pretrained(name), AutoModelForCausalLM.from_pretrained(name).eval()
    draft = S.layer_draft(model, 10)
    for text in ["The capital of France is", "def fibonacci(n):"]:
        ids = tok(text, return_tensors="pt").input_ids
        out, stats = S.speculative_generate(model, draft, ids, 24, k=4, eos_token_id=tok.eos_token_id)
        assert out.tolist() == greedy(model, ids, 24, tok.eos_token_id).tolist()
        assert stats.target_calls < stats.new_tokens  # some drafts were accepted
    # transformers' assisted generation agrees (on the last prompt)
    assisted = model.generate(ids, assistant_model=draft, do_sample=False, max_new_tokens=24,
                              eos_token_id=tok.eos_token_id, attention_mask=torch.ones_like(ids))
    assert assisted.tolist() == out.tolist()
    # a prompt-lookup draft on a copying task: same output, many drafted tokens kept
    text = ("Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the "
            "river bank.")
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out, stats = S.speculative_generate(model, S.PromptLookup(), ids, 24, k=8, eos_token_id=tok.eos_token_id)
    assert out.tolist() == greedy(model, ids, 24, tok.eos_token_id).tolist()
    assert stats.accepted > 0 and stats.target_calls < stats.new_tokens
