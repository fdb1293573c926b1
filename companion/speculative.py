"""Speculative decoding, greedy (Leviathan et al., 2023; Chen et al., 2023).

A small *draft* model proposes `k` tokens one by one; the large *target* model reads all of them
in one forward pass and keeps the longest prefix it agrees with, plus one token of its own (the
one it prefers at the first disagreement, or a bonus token when it agrees with all `k`). Every
kept token is the target's greedy choice, so the output is exactly the target's greedy output
(tested); the gain is that one target pass can yield up to k + 1 tokens. Both models keep a KV
cache, cut back after each round to the tokens that were kept.

`layer_draft(model, n)` makes a draft with no training: the first `n` layers of the target with its
own final norm and output head (self-speculation with early exit, as in LayerSkip).
`PromptLookup` is a draft with no model at all (Saxena, 2023): it finds the last few tokens
earlier in the sequence and proposes what followed them there, which is often right when the
answer copies the prompt (editing, summarising, quoting a retrieved passage)::

    >>> PromptLookup(max_ngram=2).propose([5, 6, 7, 8, 9, 1, 6, 7], 3)
    [8, 9, 1]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch


@dataclass
class SpeculativeStats:
    """What the drafts bought: proposed and accepted tokens, and the target's forward passes."""

    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    new_tokens: int = 0
    accepted_per_round: list[int] = field(default_factory=list)  # rounds that had a proposal
    empty_rounds: int = 0  # rounds without a proposal (a lookup draft that found no match)

    @property
    def acceptance_rate(self) -> float:
        """Share of drafted tokens the target kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """New tokens per forward pass of the target (1.0 for ordinary greedy decoding)."""
        return self.new_tokens / self.target_calls if self.target_calls else 0.0


def layer_draft(model, n_layers: int):
    """A copy of a decoder-only `transformers` model that keeps only its first `n_layers` blocks
    (same embeddings, final norm and head): a draft that needs no training."""
    layers = model.model.layers
    if not 1 <= n_layers < len(layers):
        raise ValueError(f"n_layers must be between 1 and {len(layers) - 1}, got {n_layers}")
    draft = copy.deepcopy(model)
    draft.model.layers = torch.nn.ModuleList(list(draft.model.layers)[:n_layers])
    draft.config.num_hidden_layers = n_layers
    if getattr(draft.config, "layer_types", None):
        draft.config.layer_types = draft.config.layer_types[:n_layers]
    return draft.eval()


@dataclass
class PromptLookup:
    """A draft that copies: the continuation of the earliest earlier match of the sequence's last
    `max_ngram` tokens (then `max_ngram - 1`, ... down to `min_ngram`), as in transformers'
    `prompt_lookup_num_tokens`; no proposal when nothing matches."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")

    def propose(self, seq: list[int], steps: int) -> list[int]:
        """Up to `steps` tokens that followed an earlier occurrence of the end of `seq`."""
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n):  # earlier windows only: the tail itself is excluded
                if seq[start:start + n] == tail:
                    return seq[start + n:start + n + steps]
        return []


def _feed(model, cache, tokens: torch.Tensor) -> torch.Tensor:
    """Run `tokens` (1, n) through `model` after what its cache holds; the logits (n, vocab)."""
    return model(input_ids=tokens, cache=cache, use_cache=True).logits[0]


@torch.no_grad()
def speculative_generate(target, draft, input_ids: torch.Tensor, max_new_tokens: int, *, k: int = 4,
                         eos_token_id: int | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy decoding of `target` sped up by `draft` (same tokenizer); one sequence (1, T).

    `draft` is a model (it drafts greedily through its own KV cache) or an object with a
    `propose(seq, steps)` method such as `PromptLookup`; a round without a proposal is one
    ordinary greedy step of the target. Returns the prompt followed by at most `max_new_tokens`
    tokens (stopping after eos), exactly as `target.generate(input_ids, do_sample=False)` would,
    and the statistics of the drafts.
    """
    from transformers import DynamicCache

    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one sequence of shape (1, T), got {tuple(input_ids.shape)}")
    if k < 1 or max_new_tokens < 1:
        raise ValueError(f"k and max_new_tokens must be >= 1, got k={k}, max_new_tokens={max_new_tokens}")
    lookup = hasattr(draft, "propose")
    target.eval()
    if not lookup:
        draft.eval()
    seq = input_ids[0].tolist()
    prompt = len(seq)
    caches = {"target": DynamicCache(), "draft": DynamicCache()}
    held = {"target": 0, "draft": 0}  # how many tokens of seq each cache holds
    stats = SpeculativeStats()

    def feed(name: str, model, tokens: list[int]) -> torch.Tensor:
        held[name] += len(tokens)
        return _feed(model, caches[name], torch.tensor([tokens]))

    def cut(name: str, keep: int) -> None:
        if held[name] > keep:
            caches[name].crop(keep - held[name])  # a negative count: remove that many
            held[name] = keep

    while len(seq) - prompt < max_new_tokens:
        room = max_new_tokens - (len(seq) - prompt)
        steps = min(k, room)
        # the draft proposes up to `steps` tokens (a model: greedily, one at a time)
        if lookup:
            proposal = list(draft.propose(seq, steps))[:steps]
            if eos_token_id in proposal:
                proposal = proposal[: proposal.index(eos_token_id) + 1]
        else:
            proposal = []
            logits = feed("draft", draft, seq[held["draft"]:])
            for _ in range(steps):
                proposal.append(int(logits[-1].argmax()))
                if len(proposal) < steps and proposal[-1] != eos_token_id:
                    logits = feed("draft", draft, proposal[-1:])
                else:
                    break
        # the target reads the pending tokens and the whole proposal in one pass
        pending = seq[held["target"]:]
        logits = feed("target", target, pending + proposal)
        choices = logits[len(pending) - 1:].argmax(-1).tolist()  # its choice after each position
        stats.target_calls += 1
        accepted = 0
        while accepted < len(proposal) and proposal[accepted] == choices[accepted]:
            accepted += 1
        new = proposal[:accepted] + [choices[accepted]]
        stats.drafted += len(proposal)
        stats.accepted += accepted
        if proposal:
            stats.accepted_per_round.append(accepted)
        else:
            stats.empty_rounds += 1
        if eos_token_id is not None and eos_token_id in new:
            new = new[: new.index(eos_token_id) + 1]
        new = new[:room]
        seq += new
        cut("target", len(seq) - 1)  # the caches keep the kept tokens only (all but the last)
        cut("draft", len(seq) - 1)
        if eos_token_id is not None and seq[-1] == eos_token_id:
            break
    stats.new_tokens = len(seq) - prompt
    return torch.tensor([seq]), stats
