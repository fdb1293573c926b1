"""Supervised fine-tuning (SFT) data for causal language models: prompt-masked labels and padding.

An SFT example is a prompt followed by the answer the model should give. The model reads both,
but only the answer is scored: the labels copy the input ids on the answer and hold
`IGNORE_INDEX` (-100) on the prompt, so the cross-entropy skips it (a `transformers` causal LM
shifts the labels by one itself, as in pre-training).

>>> example = sft_example([10, 11, 12], [20, 21])          # prompt ids, answer ids (end token included)
>>> example["input_ids"].tolist(), example["labels"].tolist()
([10, 11, 12, 20, 21], [-100, -100, -100, 20, 21])

`SFTCollator` pads a list of such examples into a batch: `input_ids` with `pad_id`, `labels`
with -100 and `attention_mask` with 0, on the right (training, one forward pass of scoring) or on
the left (batched generation, where every row must end at the last column):

>>> collate = SFTCollator(pad_id=0)
>>> batch = collate([example, sft_example([30], [31])])
>>> batch["input_ids"].tolist()
[[10, 11, 12, 20, 21], [30, 31, 0, 0, 0]]
>>> batch["labels"].tolist()
[[-100, -100, -100, 20, 21], [-100, 31, -100, -100, -100]]
>>> batch["attention_mask"].tolist()
[[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]

`answer_only=False` keeps the labels of the prompt as well (plain language modelling on the
whole text), to measure what the mask changes. `last_positions` gives, for each row of a
right-padded batch, the index of its last real token: the position whose logits predict what
comes next.

>>> last_positions(batch["attention_mask"]).tolist()
[4, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from companion.metrics import IGNORE_INDEX

PADDING_SIDES = ("right", "left")


def _ids(name: str, ids) -> list[int]:
    """A flat list of int token ids, or a clear error."""
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1:
            raise ValueError(f"{name} must be one sequence of token ids, got a tensor of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a list of token ids, got {type(ids).__name__}: "
                        "tokenize the text first, e.g. tokenizer(text, add_special_tokens=False)['input_ids']")
    ids = list(ids)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"{name} must hold int token ids, got {[type(i).__name__ for i in ids[:3]]}")
    if any(i < 0 for i in ids):
        raise ValueError(f"{name} holds negative ids {[i for i in ids if i < 0][:3]}: token ids are >= 0 "
                         f"(-100 belongs in labels, not in input ids)")
    return ids


def sft_example(prompt_ids: Sequence[int], answer_ids: Sequence[int], *, answer_only: bool = True,
                max_length: int | None = None) -> dict[str, torch.Tensor]:
    """One training example: input_ids = prompt + answer; labels = -100 on the prompt, the ids on the answer.

    The answer should end with the token that tells the model to stop (an end-of-text or
    end-of-turn id), so that the model learns to stop as well. With ``answer_only=False`` the
    labels equal the input ids everywhere. ``max_length`` is a check, not a cut: an example longer
    than the model's positions raises, because cutting off the answer would train on nothing.
    """
    prompt, answer = _ids("prompt_ids", prompt_ids), _ids("answer_ids", answer_ids)
    if not answer:
        raise ValueError("answer_ids is empty: an SFT example needs at least one answer token to learn from")
    ids = prompt + answer
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"prompt ({len(prompt)}) + answer ({len(answer)}) = {len(ids)} tokens, more than "
                         f"max_length={max_length}: shorten the prompt text before tokenizing")
    labels = ids if not answer_only else [IGNORE_INDEX] * len(prompt) + answer
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


class SFTCollator:
    """Pad SFT examples (dicts with `input_ids` and optionally `labels`) into a batch of tensors.

    Returns `input_ids` (padded with `pad_id`), `attention_mask` (1 on real tokens) and, when the
    examples have them, `labels` (padded with -100, so padding is never scored).
    """

    def __init__(self, pad_id: int, *, padding_side: str = "right"):
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        if not isinstance(pad_id, int) or pad_id < 0:
            raise ValueError(f"pad_id must be a token id >= 0, got {pad_id!r} (a tokenizer without a pad "
                             "token can pad with its end-of-text id: the attention mask hides it)")
        self.pad_id, self.padding_side = pad_id, padding_side

    def __call__(self, examples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty list of examples")
        has_labels = ["labels" in e for e in examples]
        if any(has_labels) and not all(has_labels):
            raise ValueError("some examples have labels and some do not: build them all with sft_example")
        longest = max(len(e["input_ids"]) for e in examples)
        if longest == 0:
            raise ValueError("every example is empty")
        batch = {"input_ids": torch.full((len(examples), longest), self.pad_id, dtype=torch.long),
                 "attention_mask": torch.zeros(len(examples), longest, dtype=torch.long)}
        if has_labels[0]:
            batch["labels"] = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            if has_labels[0] and len(e["labels"]) != n:
                raise ValueError(f"example {row}: {n} input ids but {len(e['labels'])} labels")
            cols = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            batch["input_ids"][row, cols] = torch.as_tensor(e["input_ids"])
            batch["attention_mask"][row, cols] = 1
            if has_labels[0]:
                batch["labels"][row, cols] = torch.as_tensor(e["labels"])
        return batch


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a right-padded (batch, time) attention mask."""
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be (batch, time), got shape {tuple(attention_mask.shape)}")
    lengths = attention_mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("a row of the attention mask is all zeros: every row needs at least one token")
    ones_first = attention_mask.long().cumsum(1).gather(1, (lengths - 1)[:, None]).squeeze(1) == lengths
    if not bool(ones_first.all()):
        raise ValueError("the attention mask is not right-padded (ones, then zeros): "
                         "collate with SFTCollator(padding_side='right') to score the last positions")
    return lengths - 1
