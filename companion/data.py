"""Tokenisers and the pre-training data pipeline: text -> ids -> packed blocks or MLM batches.

Causal LM: split documents first, then encode and pack each split into fixed-length blocks;
the labels are the input ids themselves (the model shifts them).

>>> tok = CharTokenizer.from_text("hello world")
>>> tok.decode(tok.encode("hello"))
'hello'
>>> train_docs, val_docs = train_validation_split(["aaa", "bbb", "ccc", "ddd"], val_fraction=0.25)
>>> blocks = pack_blocks(encode_documents(ByteTokenizer(), train_docs), block_size=4)
>>> blocks.shape
torch.Size([2, 4])
>>> BlockDataset(blocks)[0].keys()
dict_keys(['input_ids', 'labels'])

Masked LM: `MLMCollator` pads a list of examples and masks 15% of the real tokens.

>>> tok = CharTokenizer.from_text("hello world", specials=CharTokenizer.BERT_SPECIALS)
>>> collate = MLMCollator.from_tokenizer(tok, generator=torch.Generator().manual_seed(0))
>>> batch = collate([tok.encode("hello", add_cls_sep=True), tok.encode("world")])
>>> sorted(batch), batch["input_ids"].shape
(['attention_mask', 'input_ids', 'labels'], torch.Size([2, 7]))
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset


class _Specials:
    """Shared special-token handling: ids of <pad>, <unk>, <mask>, <cls>, <sep> (None if absent)."""

    id_to_token: dict[int, str]
    specials: tuple[str, ...]

    def special_id(self, token: str) -> int | None:
        """Id of a special token such as "<mask>", or None if this tokenizer has none."""
        return self._special_ids.get(token)

    @property
    def special_ids(self) -> list[int]:
        """Ids of every special token (never masked by the MLM collator)."""
        return sorted(self._special_ids.values())

    pad_id = property(lambda self: self.special_id("<pad>"), doc="Id of <pad> or None.")
    unk_id = property(lambda self: self.special_id("<unk>"), doc="Id of <unk> or None.")
    mask_id = property(lambda self: self.special_id("<mask>"), doc="Id of <mask> or None.")
    cls_id = property(lambda self: self.special_id("<cls>"), doc="Id of <cls> or None.")
    sep_id = property(lambda self: self.special_id("<sep>"), doc="Id of <sep> or None.")

    def _check_id(self, i: int) -> int:
        """`i` as an int if it is an id of the vocabulary, else a ValueError naming it and the size."""
        i, n = int(i), self.vocab_size
        if not 0 <= i < n:
            raise ValueError(f"token id {i} is not in the vocabulary: ids run from 0 to {n - 1} (vocab_size "
                             f"{n}); were these ids made by another tokenizer?")
        return i

    def _wrap(self, ids: list[int], add_cls_sep: bool) -> list[int]:
        if not add_cls_sep:
            return ids
        if self.cls_id is None or self.sep_id is None:
            raise ValueError("add_cls_sep=True needs <cls> and <sep> specials: build the tokenizer "
                             "with specials=...BERT_SPECIALS")
        return [self.cls_id, *ids, self.sep_id]

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (load it back with `load_tokenizer`)."""
        Path(path).write_text(json.dumps(self._state(), ensure_ascii=False, indent=1), encoding="utf-8")


class ByteTokenizer(_Specials):
    """UTF-8 bytes as ids 0-255, optional special tokens from 256 on: any text, no <unk> needed."""

    def __init__(self, specials: Sequence[str] = ()) -> None:
        self.specials = tuple(specials)
        self._special_ids = {s: 256 + i for i, s in enumerate(self.specials)}
        self.id_to_token = {i: s for s, i in self._special_ids.items()}

    @property
    def vocab_size(self) -> int:
        """256 byte values plus the specials."""
        return 256 + len(self.specials)

    def encode(self, text: str, *, add_cls_sep: bool = False) -> list[int]:
        """The UTF-8 bytes of `text` (a Chinese character is 3 ids)."""
        return self._wrap(list(text.encode("utf-8")), add_cls_sep)

    def decode(self, ids: Iterable[int], *, skip_specials: bool = False) -> str:
        """Bytes back to text; invalid UTF-8 (e.g. a cut character) becomes U+FFFD."""
        out, buf = [], bytearray()
        for i in (self._check_id(i) for i in ids):
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_specials:
                out.append(self.id_to_token[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def _state(self) -> dict:
        return {"type": "byte", "specials": list(self.specials)}


class CharTokenizer(_Specials):
    """One id per character seen in the training text, special tokens first."""

    BERT_SPECIALS = ("<pad>", "<unk>", "<cls>", "<sep>", "<mask>")

    def __init__(self, chars: Sequence[str], specials: Sequence[str] = ("<unk>",)) -> None:
        self.specials, chars = tuple(specials), list(chars)
        if len(set(self.specials)) != len(self.specials):
            raise ValueError(f"duplicate special tokens in {self.specials}")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"each of chars must be exactly one character, got {c!r}: split it into "
                                 "characters, or pass a longer token in specials")
        self.id_to_token = dict(enumerate([*self.specials, *chars]))
        self.token_to_id = {t: i for i, t in self.id_to_token.items()}
        if len(self.token_to_id) != len(self.id_to_token):
            raise ValueError("chars must be distinct single characters, different from the specials")
        self._special_ids = {s: i for i, s in enumerate(self.specials)}

    @classmethod
    def from_text(cls, text: str, specials: Sequence[str] = ("<unk>",)) -> CharTokenizer:
        """Vocabulary = the sorted distinct characters of `text` (build it from training text only)."""
        return cls(sorted(set(text)), specials)

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.id_to_token)

    def encode(self, text: str, *, add_cls_sep: bool = False) -> list[int]:
        """One id per character; an unseen character becomes <unk>."""
        unk = self.unk_id
        try:
            ids = [self.token_to_id[c] if unk is None else self.token_to_id.get(c, unk) for c in text]
        except KeyError as e:
            raise KeyError(f"character {e.args[0]!r} is not in the vocabulary and there is no <unk>: "
                           "build the tokenizer with specials=('<unk>', ...)") from None
        return self._wrap(ids, add_cls_sep)

    def decode(self, ids: Iterable[int], *, skip_specials: bool = False) -> str:
        """Ids back to text; specials are written as their names unless skipped."""
        n = len(self.specials)
        ids = [self._check_id(i) for i in ids]
        return "".join(self.id_to_token[i] for i in ids if not (skip_specials and i < n))

    def _state(self) -> dict:
        chars = [self.id_to_token[i] for i in range(len(self.specials), self.vocab_size)]
        return {"type": "char", "specials": list(self.specials), "chars": chars}


def load_tokenizer(path: str | Path) -> ByteTokenizer | CharTokenizer:
    """Read a tokenizer written by `.save(path)`."""
    state = json.loads(Path(path).read_text(encoding="utf-8"))
    if state.get("type") == "byte":
        return ByteTokenizer(state["specials"])
    if state.get("type") == "char":
        return CharTokenizer(state["chars"], state["specials"])
    raise ValueError(f"{path} is not a tokenizer file written by companion.data (type={state.get('type')!r})")


def encode_documents(tokenizer, documents: Iterable[str], *, separator_id: int | None = None) -> list[int]:
    """Encode documents and concatenate them into one id stream, `separator_id` after each if given."""
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer.encode(doc))
        if separator_id is not None:
            ids.append(separator_id)
    return ids


def pack_blocks(token_ids: Sequence[int] | torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut a stream of ids into (n_blocks, block_size) rows; the incomplete tail is dropped."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    n = ids.numel() // block_size
    if n == 0:
        raise ValueError(f"{ids.numel()} tokens make no block of {block_size}: use more text "
                         "or a smaller block_size")
    return ids[: n * block_size].view(n, block_size).clone()


class BlockDataset(Dataset):
    """Packed blocks as {"input_ids", "labels"} examples; labels = input_ids (the model shifts)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        if blocks.ndim != 2:
            raise ValueError(f"blocks must be (n_blocks, block_size), got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    @classmethod
    def from_documents(cls, tokenizer, documents: Iterable[str], block_size: int, *,
                       separator_id: int | None = None) -> BlockDataset:
        """Encode, concatenate and pack documents of ONE split (split them first)."""
        return cls(pack_blocks(encode_documents(tokenizer, documents, separator_id=separator_id), block_size))

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i].clone()}


def train_validation_split(documents: Sequence[str], *, val_fraction: float = 0.1,
                           seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle whole documents and split them, BEFORE packing, so no block mixes the two sets."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = round(len(documents) * val_fraction)
    if n_val == 0 or n_val == len(documents):
        raise ValueError(f"{len(documents)} documents with val_fraction={val_fraction} leave one split "
                         "empty: use more documents or another fraction")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [documents[i] for i in train], [documents[i] for i in val]


@dataclass
class MLMCollator:
    """Pad examples and mask them for BERT: select `mask_prob` of the real tokens, then replace
    80% of those with <mask>, 10% with a random token, leave 10%; labels are -100 elsewhere."""

    vocab_size: int
    mask_id: int
    pad_id: int
    special_ids: Sequence[int] = ()  # never selected (nor padding); never drawn as random tokens
    mask_prob: float = 0.15
    mask_frac: float = 0.8
    random_frac: float = 0.1
    generator: torch.Generator | None = None  # fix it for reproducible masks (with num_workers=0)
    _candidates: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.mask_frac < 0 or self.random_frac < 0 or self.mask_frac + self.random_frac > 1:
            raise ValueError("mask_frac and random_frac must be >= 0 and sum to at most 1")
        excluded = {self.mask_id, self.pad_id, *self.special_ids}
        self._candidates = torch.tensor([i for i in range(self.vocab_size) if i not in excluded])

    @classmethod
    def from_tokenizer(cls, tokenizer, **kwargs) -> MLMCollator:
        """Take vocab size, <mask>, <pad> and the special ids from a tokenizer of this module."""
        if tokenizer.mask_id is None or tokenizer.pad_id is None:
            raise ValueError("the tokenizer needs <mask> and <pad> specials: build it with "
                             "specials=CharTokenizer.BERT_SPECIALS")
        return cls(tokenizer.vocab_size, tokenizer.mask_id, tokenizer.pad_id,
                   tokenizer.special_ids, **kwargs)

    def mask_tokens(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, labels) for a (batch, time) tensor; labels keep the original selected ids."""
        special = torch.isin(input_ids, torch.tensor([self.pad_id, *self.special_ids]))
        g = self.generator
        selected = (torch.rand(input_ids.shape, generator=g) < self.mask_prob) & ~special
        labels = input_ids.masked_fill(~selected, -100)
        action = torch.rand(input_ids.shape, generator=g)  # one draw decides mask / random / keep
        to_mask = selected & (action < self.mask_frac)
        to_random = selected & (action >= self.mask_frac) & (action < self.mask_frac + self.random_frac)
        random_ids = self._candidates[torch.randint(len(self._candidates), input_ids.shape, generator=g)]
        inputs = input_ids.masked_fill(to_mask, self.mask_id)
        inputs = torch.where(to_random, random_ids, inputs)
        return inputs, labels

    def __call__(self, examples: Sequence) -> dict[str, torch.Tensor]:
        """Right-pad a list of id lists / tensors / {"input_ids": ...} dicts, then mask them."""
        rows = [torch.as_tensor(e["input_ids"] if isinstance(e, dict) else e, dtype=torch.long)
                for e in examples]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            attention_mask[i, : len(r)] = 1
        inputs, labels = self.mask_tokens(input_ids)
        return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}
