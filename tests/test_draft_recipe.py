"""companion.draft_recipe: the subset head, the draft's parameters, agreement, saving, the recipe."""

from __future__ import annotations

import pytest
import torch

from companion import draft_recipe as D

pytestmark = pytest.mark.usefixtures("one_thread")
EOS = 2


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def greedy_pairs(model, n_prompts: int = 6, new: int = 12) -> list[tuple[list[int], list[int]]]:
    gen = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(n_prompts):
        ids = torch.randint(3, 97, (1, 5), generator=gen)
        out = model.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=EOS,
                             pad_token_id=EOS, attention_mask=torch.ones_like(ids))
        pairs.append((ids[0].tolist(), out[0, 5:].tolist()))
    return pairs


def test_subset_head_matches_the_full_head_on_its_tokens_and_is_minus_inf_elsewhere():
    weight = torch.randn(20, 8)
    ids = torch.tensor([0, 3, 7, 19])
    head = D.SubsetHead(weight, ids)
    h = torch.randn(2, 5, 8)
    out = head(h)
    assert out.shape == (2, 5, 20)
    assert torch.allclose(out[..., ids], h @ weight[ids].T)
    others = torch.ones(20, dtype=torch.bool)
    others[ids] = False
    assert torch.isneginf(out[..., others]).all()
    assert set(out.argmax(-1).flatten().tolist()) <= set(ids.tolist())


def test_the_vocabulary_holds_the_low_ids_eos_and_every_answer_token():
    vocab = D.draft_vocabulary([([1, 2], [50, 60, 2]), ([9], [70])], top_tokens=10, eos=95)
    assert vocab == sorted(set(range(10)) | {50, 60, 70, 95})


def test_only_the_blocks_and_the_norm_train(tiny):
    draft = D.build_draft(tiny, 2, list(range(40)))
    trainable = {n for n, p in draft.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.", "model.norm.")) for n in trainable)
    assert len(draft.model.layers) == 2 and isinstance(draft.lm_head, D.SubsetHead)
    assert not draft.model.embed_tokens.weight.requires_grad
    # the target is untouched: its head is still the full (tied) one
    assert tiny.lm_head.weight.shape == (97, 64) and len(tiny.model.layers) == 4


def test_the_target_itself_agrees_with_its_own_greedy_answers(tiny):
    pairs = greedy_pairs(tiny)
    full = D.build_draft(tiny, 3, list(range(97)))
    full.model.layers.append(tiny.model.layers[3])  # all four blocks: the target with a full subset
    full.config.num_hidden_layers = 4
    assert D.agreement(full, pairs, pad=EOS) == pytest.approx(1.0)
    assert D.agreement(D.build_draft(tiny, 1, list(range(97))), pairs, pad=EOS) < 1.0


def test_training_raises_agreement_and_keeps_the_rest_frozen(tiny):
    # answers that follow a fixed chain t -> next[t]: learnable, and unlike the untrained draft
    chain = torch.randperm(97, generator=torch.Generator().manual_seed(3)).tolist()
    pairs = []
    for start in range(3, 11):
        answer = [start]
        while len(answer) < 12:
            answer.append(chain[answer[-1]])
        pairs.append(([1, start], answer))
    draft = D.build_draft(tiny, 1, list(range(97)))
    embed = draft.model.embed_tokens.weight.clone()
    before = D.agreement(draft, pairs, pad=EOS)
    config = D.DraftConfig(n_layers=1, epochs=30, lr=3e-3, batch_size=4, warmup_steps=2)
    run = D.train_draft(draft, pairs, pairs, pad=EOS, config=config, seed=0)
    assert run["steps"] == 60 and len(run["history"]) == 31
    assert run["history"][-1]["val_agreement"] > before + 0.3
    assert torch.equal(draft.model.embed_tokens.weight, embed)


def test_saved_drafts_load_as_they_were_rounded(tiny, tmp_path):
    draft = D.build_draft(tiny, 2, [0, 2, 5, 40, 96])
    with torch.no_grad():
        for p in draft.model.layers.parameters():
            p.add_(0.01 * torch.randn_like(p))
    D.round_to_bfloat16(draft)
    D.save_draft(draft, tmp_path / "d.safetensors")
    loaded = D.load_draft(tiny, tmp_path / "d.safetensors")
    ids = torch.tensor([[5, 9, 13, 40]])
    assert torch.equal(loaded(ids).logits, draft(ids).logits)
    assert loaded.lm_head.ids.tolist() == [0, 2, 5, 40, 96]
    with pytest.raises(FileNotFoundError, match="companion.recipes draft"):
        D.load_draft(tiny, tmp_path / "missing.safetensors")


def test_speculative_figures_check_every_output_against_greedy(tiny):
    pairs = greedy_pairs(tiny, n_prompts=3)
    draft = D.build_draft(tiny, 2, list(range(97)))
    prompts = [p for p, _ in pairs]
    timed = D.speculative_figures(tiny, draft, prompts, k=3, max_new_tokens=12, eos=EOS, assisted=True)
    assert [g[5:] for g in timed["greedy"]] == [a for _, a in pairs]
    assert set(timed["seconds"]) == {"ours", "plain", "assisted"}
    assert timed["new_tokens"] == sum(len(a) for _, a in pairs)
    again = D.speculative_figures(tiny, draft, prompts, k=3, max_new_tokens=12, eos=EOS,
                                  greedy=timed["greedy"])
    assert again["acceptance"] == timed["acceptance"] and "seconds" not in again
    wrong = [g[:-1] + [(g[-1] + 1) % 97] for g in timed["greedy"]]
    with pytest.raises(ValueError, match="differs from greedy"):
        D.speculative_figures(tiny, draft, prompts, k=3, max_new_tokens=12, eos=EOS, greedy=wrong)


def test_the_shipped_results_hold_three_seeds_and_beat_the_untrained_draft():
    from companion.recipes import shipped_results

    r = shipped_results(D.KEY)
    assert r["full_run"] and len(r["seeds"]) >= 3 and r["config"]["k"] == 3
    s, base = r["summary"], r["untrained"]
    assert s["test_agreement"]["mean"] > base["test_agreement"] + 0.2
    assert s["tokens_per_target_call"]["mean"] > base["speculative"]["tokens_per_target_call"]
    assert all(run["history"][-1]["val_agreement"] > run["history"][0]["val_agreement"] for run in r["runs"])
    assert f"draft-seed-{r['seeds'][0]}.safetensors" in r["artifacts"]
