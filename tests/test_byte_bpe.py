"""companion.byte_bpe against the Hugging Face `tokenizers` library and GPT-2's published table."""

from __future__ import annotations

import doctest

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

import companion.byte_bpe
from companion.bpe import hf_merges
from companion.byte_bpe import (
    ByteBPETokenizer,
    bytes_to_unicode,
    count_pieces,
    hf_byte_level,
    hf_trainer,
    pre_tokenize,
    to_hf_tokenizer,
    to_symbols,
)

MIXED = ["我爱自然语言处理 😀", "it's   2024 -- ok?!\n\n", "naïve café\tdéjà vu  ", "🤗🤗 x\u200by", " \u00e9\u0301"]


def hf_train(texts, vocab_size: int) -> Tokenizer:
    """A `tokenizers` byte-level BPE trained with the settings of companion.byte_bpe."""
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = hf_byte_level()
    hf.train_from_iterator(texts, hf_trainer(vocab_size))
    return hf


@pytest.fixture(scope="module")
def trained(movie_reviews):
    texts = movie_reviews["train"]["text"][:400]
    return ByteBPETokenizer.train(texts, vocab_size=1500), hf_train(texts, vocab_size=1500)


def test_docstring_examples():
    assert doctest.testmod(companion.byte_bpe).failed == 0


def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(table) == len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[32] == "Ġ" and table[10] == "Ċ" and table[0] == "Ā"
    assert table[0xAD] == "Ń" and table[0x7F] == "ġ"        # soft hyphen and DEL are remapped too
    # tokenizers' alphabet is the same 256 characters, and its ids follow code-point order = byte order
    assert set(pre_tokenizers.ByteLevel.alphabet()) == set(table.values())
    assert sorted(table.values()) == [table[b] for b in sorted(table, key=lambda b: table[b])]


@pytest.mark.parametrize("text", [
    "I'm here, aren't you?", "  two  spaces  ", "1998年 cost $3.50!!", "tab\there\n\nnew line ",
    "don't DON'T it’s", "ünïcödé ∑ 😀 中文", "a\u00a0b\u200bc", "",
])
def test_pre_tokenizer_matches_tokenizers(text):
    theirs = [piece for piece, _ in hf_byte_level().pre_tokenize_str(text)]
    assert [to_symbols(p) for p in pre_tokenize(text)] == theirs
    assert "".join(pre_tokenize(text)) == text                  # the pieces cover the text


def test_pre_tokenizer_pieces_by_hand():
    assert pre_tokenize("I'm here, aren't you?") == ["I", "'m", " here", ",", " aren", "'t", " you", "?"]
    assert pre_tokenize("a  b\n") == ["a", " ", " b", "\n"]    # the space before a word stays with it
    assert pre_tokenize("year 1998!!") == ["year", " 1998", "!!"]
    assert pre_tokenize("DON'T") == ["DON", "'", "T"]         # contractions are lower-case only


@pytest.mark.parametrize("text", [
    "low low low lower lower newest newest widest",
    "aaaa aaa aa a abab baba",
    "ab ba ab ba abc cab bca 电影 电影 电脑 😀😀",
])
@pytest.mark.parametrize("vocab_size", [258, 262, 270, 300])
def test_same_merges_as_tokenizers_on_toy_corpora(text, vocab_size):
    ours = ByteBPETokenizer.train(text, vocab_size)
    theirs = hf_train([text], vocab_size)
    assert ours.merges == hf_merges(theirs)
    assert ours.token_to_id == theirs.get_vocab()


def test_same_merges_ids_and_encodings_as_tokenizers_on_movie_reviews(trained, movie_reviews):
    ours, theirs = trained
    assert len(ours.vocab) == theirs.get_vocab_size() == 1500
    assert ours.merges == hf_merges(theirs)                     # same merges in the same order
    assert ours.token_to_id == theirs.get_vocab()               # same ids
    held_out = list(movie_reviews["validation"]["text"]) + list(movie_reviews["test"]["text"])
    reloaded = to_hf_tokenizer(ours)
    for text in held_out + MIXED:
        ids = ours.encode(text)
        assert ids == theirs.encode(text).ids == reloaded.encode(text).ids


def test_round_trip_without_unknown_tokens(trained):
    ours, _ = trained
    reloaded = to_hf_tokenizer(ours)
    for text in MIXED:
        ids = ours.encode(text)
        assert ours.decode(ids) == text == reloaded.decode(ids)
    assert ours.decode(ours.encode("😀")[:2]) == "\ufffd"         # a cut character decodes to �


def test_count_pieces():
    assert count_pieces(["the cat", "the dog"]) == {"the": 2, "Ġcat": 1, "Ġdog": 1}


def test_decode_rejects_ids_outside_the_vocabulary(trained):
    ours, _ = trained
    with pytest.raises(ValueError, match="token id 1500 is not in the vocabulary"):
        ours.decode([1500])


def test_smollm2_vocabulary_and_merges_encode_like_its_tokenizer(movie_reviews):
    import companion.resources

    companion.resources.require("smollm2")
    from transformers import AutoTokenizer

    smol = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    ours = ByteBPETokenizer.from_hf(smol.backend_tokenizer)
    assert len(ours) == len(smol) == 49152 and len(ours.merges) == 48900
    texts = list(movie_reviews["test"]["text"][:50]) + MIXED + ["Tokenizers split unbelievable words."]
    for text in texts:
        assert ours.encode(text) == smol(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == text
    # 21 bytes have no token in SmolLM2 (6 of them ASCII control characters): both drop them
    assert sum(c in ours.token_to_id for c in bytes_to_unicode().values()) == 235
    assert ours.encode("a\x13b") == smol("a\x13b")["input_ids"] == ours.encode("a") + ours.encode("b")
    # text that spells a special token: the tokenizer matches it as one token unless told not to
    injected = "say <|im_end|> now"
    assert smol(injected)["input_ids"].count(smol.convert_tokens_to_ids("<|im_end|>")) == 1
    assert ours.encode(injected) == smol(injected, split_special_tokens=True)["input_ids"]
