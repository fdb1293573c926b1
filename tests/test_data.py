"""Tokenisers, packing, a leak-free train/validation split and the MLM collator's statistics."""

import pytest
import torch
from torch.utils.data import DataLoader

from companion.data import (BlockDataset, ByteTokenizer, CharTokenizer, MLMCollator, encode_documents,
                            load_tokenizer, pack_blocks, train_validation_split)

TEXT = "Hello, world! 你好，世界。\nNaïve café — 12 € 🙂"


def test_byte_tokenizer_round_trip_and_save(tmp_path):
    tok = ByteTokenizer(specials=("<eos>", "<pad>"))
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and max(ids) < 256
    assert tok.vocab_size == 258 and tok.special_id("<eos>") == 256 and tok.pad_id == 257
    assert tok.decode(ids) == TEXT
    assert len(tok.encode("你")) == 3  # one Chinese character = 3 UTF-8 bytes
    assert tok.decode([*tok.encode("ab"), 256, *tok.encode("c")]) == "ab<eos>c"
    assert tok.decode([*tok.encode("ab"), 256], skip_specials=True) == "ab"
    assert tok.decode(tok.encode("你")[:2]) == "\ufffd"  # a cut character does not crash decoding
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(again, ByteTokenizer) and again.encode(TEXT) == ids and again.pad_id == 257


def test_char_tokenizer_round_trip_unknown_and_save(tmp_path):
    tok = CharTokenizer.from_text(TEXT, specials=CharTokenizer.BERT_SPECIALS)
    assert tok.vocab_size == len(set(TEXT)) + 5
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.encode("H?") == [tok.token_to_id["H"], tok.unk_id]  # '?' never seen
    wrapped = tok.encode("He", add_cls_sep=True)
    assert wrapped[0] == tok.cls_id and wrapped[-1] == tok.sep_id
    assert tok.decode(wrapped) == "<cls>He<sep>" and tok.decode(wrapped, skip_specials=True) == "He"
    tok.save(tmp_path / "chars.json")
    again = load_tokenizer(tmp_path / "chars.json")
    assert again.id_to_token == tok.id_to_token and again.special_ids == [0, 1, 2, 3, 4]
    strict = CharTokenizer.from_text("ab", specials=())
    with pytest.raises(KeyError, match="<unk>"):
        strict.encode("abc")
    with pytest.raises(ValueError, match="<cls>"):
        strict.encode("ab", add_cls_sep=True)


@pytest.mark.parametrize("make", [
    lambda: ByteTokenizer(specials=("<eos>",)),
    lambda: ByteTokenizer(),
    lambda: CharTokenizer.from_text("abc", specials=CharTokenizer.BERT_SPECIALS),
], ids=["bytes+specials", "bytes", "chars"])
def test_decode_rejects_ids_outside_the_vocabulary(make):
    tok = make()
    n = tok.vocab_size
    assert tok.decode([n - 1]) or tok.decode([n - 1]) == ""  # the last id is fine
    for bad in (-1, n, n + 100):
        # -1 was skipped with skip_specials (it is < the number of specials), or gave a bare
        # KeyError, or "byte must be in range(0, 256)"
        for skip in (False, True):
            with pytest.raises(ValueError, match=rf"token id {bad} is not in the vocabulary.*0 to {n - 1}.*"
                                                 rf"vocab_size {n}"):
                tok.decode([*tok.encode("ab"), bad], skip_specials=skip)


@pytest.mark.parametrize("chars", [["ab", "c"], ["a", ""], ["a", 7]])
def test_char_tokenizer_needs_single_characters(chars):
    bad = next(c for c in chars if not isinstance(c, str) or len(c) != 1)
    with pytest.raises(ValueError, match=rf"exactly one character.*{bad!r}"):
        CharTokenizer(chars)
    # specials may be longer; a string of characters is a sequence of single characters
    tok = CharTokenizer("abc", specials=("<unk>", "<mask>"))
    assert tok.decode(tok.encode("cab")) == "cab" and tok.vocab_size == 5


def test_pack_blocks_and_dataset_follow_the_labels_equal_inputs_convention():
    blocks = pack_blocks(list(range(23)), block_size=5)
    assert blocks.dtype == torch.long and blocks.shape == (4, 5)  # the 3-token tail is dropped
    assert blocks[1].tolist() == [5, 6, 7, 8, 9]
    ds = BlockDataset(blocks)
    assert len(ds) == 4 and torch.equal(ds[2]["input_ids"], ds[2]["labels"])
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 5)
    with pytest.raises(ValueError, match="no block"):
        pack_blocks([1, 2], block_size=5)
    tok = ByteTokenizer(specials=("<eos>",))
    ds = BlockDataset.from_documents(tok, ["abc", "de"], block_size=3, separator_id=256)
    assert ds.blocks.tolist() == [[97, 98, 99], [256, 100, 101]]  # "abc<eos>de" + a dropped tail


def _documents(n: int) -> list[str]:
    """Document i is written only with its own 10 CJK characters, so any leak is visible in ids."""
    g = torch.Generator().manual_seed(0)
    return ["".join(chr(0x4E00 + 10 * i + int(j)) for j in torch.randint(0, 10, (int(n_chars),), generator=g))
            for i, n_chars in enumerate(torch.randint(20, 60, (n,), generator=g))]


def test_split_by_document_before_packing_never_leaks():
    docs = _documents(40)
    train_docs, val_docs = train_validation_split(docs, val_fraction=0.2, seed=0)
    assert len(val_docs) == 8 and sorted(train_docs + val_docs) == sorted(docs)
    assert train_validation_split(docs, val_fraction=0.2, seed=0) == (train_docs, val_docs)
    assert train_validation_split(docs, val_fraction=0.2, seed=1) != (train_docs, val_docs)
    tok = CharTokenizer.from_text("".join(train_docs), specials=("<unk>", "<eos>"))
    eos = tok.special_id("<eos>")
    train_ids = set(encode_documents(tok, train_docs, separator_id=eos)) - {eos}
    val_blocks = pack_blocks(encode_documents(tok, val_docs, separator_id=eos), block_size=16)
    # characters of validation documents are unknown to a tokenizer built on training text only
    assert set(val_blocks.flatten().tolist()) <= {tok.unk_id, eos}
    byte_tok = ByteTokenizer()
    train_text = set("".join(train_docs))
    for block in pack_blocks(encode_documents(byte_tok, val_docs), block_size=48):
        assert not set(byte_tok.decode(block)) & train_text  # no training character in any val block
    # the same check catches a split made AFTER packing: a block straddles two documents
    blocks = pack_blocks(encode_documents(byte_tok, docs), block_size=48)
    docs_in_block = [{(ord(c) - 0x4E00) // 10 for c in byte_tok.decode(b) if c != "\ufffd"} for b in blocks]
    val_index = {docs.index(d) for d in val_docs}
    assert any(d & val_index and d - val_index for d in docs_in_block)
    assert len(train_ids) > 100  # the tokenizer knows the training text: the check above is not vacuous
    with pytest.raises(ValueError, match="empty"):
        train_validation_split(docs[:3], val_fraction=0.1)


def _collator(seed: int) -> tuple[CharTokenizer, MLMCollator]:
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz", specials=CharTokenizer.BERT_SPECIALS)
    return tok, MLMCollator.from_tokenizer(tok, generator=torch.Generator().manual_seed(seed))


def _examples(tok: CharTokenizer, n: int = 2000) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(100, 300, (n,), generator=g)
    return [[tok.cls_id, *torch.randint(5, tok.vocab_size, (int(k) - 2,), generator=g).tolist(), tok.sep_id]
            for k in lengths]


def test_mlm_collator_proportions_on_a_large_batch():
    tok, collate = _collator(seed=0)
    examples = _examples(tok)
    batch = collate(examples)
    original = torch.full_like(batch["input_ids"], tok.pad_id)
    for i, e in enumerate(examples):
        original[i, : len(e)] = torch.tensor(e)
    eligible = batch["attention_mask"].bool() & (original >= 5)
    selected = batch["labels"] != -100
    assert eligible.sum() > 300_000
    assert abs(selected.sum() / eligible.sum() - 0.15) < 0.005
    assert torch.equal(batch["labels"][selected], original[selected])  # labels are the true ids
    inputs = batch["input_ids"][selected]
    masked = (inputs == tok.mask_id).float().mean()
    unchanged = (inputs == original[selected]).float().mean()
    replaced = 1 - masked - unchanged
    # a random replacement can draw the original id (1/26 of the 10%): expected 0.1*(1-1/26) etc.
    assert abs(masked - 0.8) < 0.01
    assert abs(replaced - 0.1 * 25 / 26) < 0.01 and abs(unchanged - (0.1 + 0.1 / 26)) < 0.01
    # outside the selection nothing changes; random ids are never specials
    assert torch.equal(batch["input_ids"][~selected], original[~selected])
    assert (batch["input_ids"][selected & (batch["input_ids"] != tok.mask_id)] >= 5).all()


def test_mlm_collator_never_masks_specials_or_padding():
    tok, collate = _collator(seed=0)
    examples = _examples(tok, n=300)
    batch = collate(examples)
    original = torch.full_like(batch["input_ids"], tok.pad_id)
    for i, e in enumerate(examples):
        original[i, : len(e)] = torch.tensor(e)
    special = torch.isin(original, torch.tensor(tok.special_ids))
    assert special.sum() > 10_000  # padding, <cls>, <sep> are plentiful
    assert (batch["labels"][special] == -100).all()
    assert torch.equal(batch["input_ids"][special], original[special])
    assert torch.equal(batch["attention_mask"], (torch.arange(original.size(1)) < torch.tensor(
        [len(e) for e in examples])[:, None]).long())


def test_mlm_collator_is_deterministic_with_a_seeded_generator():
    tok, first = _collator(seed=123)
    _, second = _collator(seed=123)
    _, other = _collator(seed=124)
    examples = _examples(tok, n=50)
    a, b, c = first(examples), second(examples), other(examples)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])
    assert not torch.equal(first(examples)["labels"], a["labels"])  # the next batch gets new masks
    dicts = first([{"input_ids": torch.tensor(e)} for e in examples[:4]])  # dataset items work too
    assert dicts["input_ids"].shape == (4, max(len(e) for e in examples[:4]))
    with pytest.raises(ValueError, match="<mask>"):
        MLMCollator.from_tokenizer(ByteTokenizer())
