"""Prompting a causal LM as a classifier: verbalizer scores behind a cached prefix, and calibration.

A prompt turns classification into next-token prediction: the model reads
``prefix + query`` and we compare the probabilities of one token per label (the verbalizer,
e.g. " positive" / " negative") at the position after the query. Everything before the query
(an instruction, few-shot demonstrations) is the same for every query, so `prefix_cache` runs it
once and `label_log_probs` reuses its keys and values for all queries: a long prefix then
costs almost nothing per query.

>>> import torch
>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> _ = torch.manual_seed(0)
>>> model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50)).eval()
>>> scores = label_log_probs(model, [[4, 5], [6, 7, 8]], label_ids=[10, 11], prefix=[1, 2, 3])
>>> scores.shape                          # one row per query, one column per label
torch.Size([2, 2])
>>> full = model(torch.tensor([[1, 2, 3, 6, 7, 8]])).logits[0, -1].log_softmax(-1)[[10, 11]]
>>> torch.allclose(scores[1], full, atol=1e-5)   # the same as one forward over prefix + query
True

Contextual calibration (Zhao et al., 2021) divides the label probabilities by those the prompt
gives a content-free input such as "N/A", so that input would score every label equally:

>>> probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
>>> calibrate(probs, torch.tensor([0.65, 0.35])).argmax(-1)   # both were "label 0" before
tensor([0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from companion.sft import SFTCollator, last_positions


@torch.no_grad()
def prefix_cache(model, ids: Sequence[int] | None = None, *, embeds: torch.Tensor | None = None) -> list:
    """Keys and values of every layer for one prefix, given as token ids or as input embeddings.

    Embeddings are how a trained soft prompt (a (n_virtual, width) tensor) becomes a prefix: after
    training it is a constant, so its keys and values can be computed once like any text's.
    """
    if (ids is None) == (embeds is None):
        raise ValueError("give exactly one of ids and embeds")
    if ids is not None:
        if len(ids) == 0:
            raise ValueError("the prefix is empty: pass prefix=None to label_log_probs instead")
        kwargs = {"input_ids": torch.tensor([list(ids)], device=model.device)}
    else:
        kwargs = {"inputs_embeds": embeds.reshape(1, -1, embeds.shape[-1]).to(model.device, model.dtype)}
    cache = model.base_model(**kwargs, use_cache=True).cache
    return [(layer.keys, layer.values) for layer in cache.layers]


def _expanded(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> DynamicCache:
    """A fresh cache holding the prefix once per row (a view: no copy until the model appends)."""
    return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])


@torch.no_grad()
def label_log_probs(model, queries: Sequence[Sequence[int]], label_ids: Sequence[int], *,
                    prefix: Sequence[int] | list | None = None, batch_size: int = 16,
                    pad_id: int = 0) -> torch.Tensor:
    """log p(label token | prefix + query) for every query: a (len(queries), len(label_ids)) tensor.

    `prefix` is None, token ids, or the output of `prefix_cache` (to reuse one cache for several
    calls). Token ids are run once here. The probabilities are over the whole vocabulary, so a
    row need not sum to 1 over the labels. Queries are sorted by length and batched with right
    padding, which a causal LM needs no attention mask for: a real token never attends to the
    pads after it, and each query is read at its own last token.
    """
    if any(len(q) == 0 for q in queries):
        raise ValueError("every query needs at least one token: the label is read after its last one")
    body, head = model.base_model, model.get_output_embeddings()
    vocab = head.out_features
    bad = [i for i in label_ids if not 0 <= int(i) < vocab]
    if bad:
        raise ValueError(f"label ids {bad} are not in the vocabulary (0 to {vocab - 1}): pass the "
                         "token id of each label word, e.g. tokenizer.encode(' positive')[0]")
    cache = prefix
    if prefix is not None and len(prefix) and not isinstance(prefix[0], tuple):
        cache = prefix_cache(model, prefix)
    elif prefix is not None and not len(prefix):
        cache = None
    collate = SFTCollator(pad_id)                # right padding: each query keeps positions 0, 1, ...
    order = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    out = torch.empty(len(queries), len(label_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = collate([{"input_ids": torch.as_tensor(list(queries[i]), dtype=torch.long)} for i in rows])
        kwargs = {"cache": _expanded(cache, len(rows)), "use_cache": True} if cache is not None else {}
        output = body(input_ids=batch["input_ids"].to(model.device), **kwargs)
        seen = cache[0][0].shape[2] + batch["input_ids"].shape[1] if cache is not None else None
        if seen is not None and output.cache.get_seq_length() != seen:  # a model that drops `cache`
            raise RuntimeError(f"{type(body).__name__} ignored the prefix cache: the scores would "
                               "not see the prefix. Pass prefix=None and put the prefix in each query.")
        hidden = output.last_hidden_state
        logits = head(hidden[torch.arange(len(rows)), last_positions(batch["attention_mask"])]).float()
        out[rows] = logits.log_softmax(-1)[:, list(label_ids)].cpu()
    return out


def calibrate(probs: torch.Tensor, content_free: torch.Tensor) -> torch.Tensor:
    """Contextual calibration: renormalise over the labels, divide by the content-free input's, renormalise.

    `probs` is (n, labels) and `content_free` (labels,) or (k, labels) for k content-free inputs,
    averaged as in the paper. Both may be probabilities or unnormalised scores over the labels.
    """
    probs = probs / probs.sum(-1, keepdim=True)
    p_cf = content_free / content_free.sum(-1, keepdim=True)
    if p_cf.ndim == 2:
        p_cf = p_cf.mean(0)
        p_cf = p_cf / p_cf.sum()
    scores = probs / p_cf
    return scores / scores.sum(-1, keepdim=True)
