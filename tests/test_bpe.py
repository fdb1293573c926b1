"""companion.bpe against the Hugging Face `tokenizers` library (the reference implementation)."""

from __future__ import annotations

import doctest

import pytest
from tokenizers import Tokenizer, models, trainers

import companion.bpe
from companion.bpe import UNK, BPETokenizer, hf_merges, hf_pre_tokenizer, merge_word, pre_tokenize, to_hf_tokenizer, train_bpe


def hf_train(texts, vocab_size: int) -> Tokenizer:
    """A `tokenizers` BPE trained with BpeTrainer on the same pre-tokenisation as ours."""
    hf = Tokenizer(models.BPE(unk_token=UNK))
    hf.pre_tokenizer = hf_pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[UNK], show_progress=False)
    hf.train_from_iterator(texts, trainer)
    return hf


@pytest.fixture(scope="module")
def trained(movie_reviews):
    texts = movie_reviews["train"]["text"]
    return BPETokenizer.train(texts, vocab_size=1000), hf_train(texts, vocab_size=1000)


def test_docstring_examples():
    assert doctest.testmod(companion.bpe).failed == 0


def test_pre_tokenize_matches_tokenizers():
    text = "it's  a\nfilm ,\tnot a  movie "
    ours = pre_tokenize(text)
    theirs = [piece for piece, _ in hf_pre_tokenizer().pre_tokenize_str(text)]
    assert ours == theirs == ["▁it's", "▁a", "▁film", "▁,", "▁not", "▁a", "▁movie"]


def test_merge_word_hand_computed():
    # a b c b c d, merge (b, c) -> 9
    a, b, c, d, bc = 1, 2, 3, 4, 9
    word, changes = merge_word([a, b, c, b, c, d], (b, c), bc)
    assert word == [a, bc, bc, d]
    net = {}
    for pair, delta in changes:
        net[pair] = net.get(pair, 0) + delta
    net = {p: n for p, n in net.items() if n}
    assert net == {(a, b): -1, (b, c): -2, (c, b): -1, (c, d): -1, (a, bc): 1, (bc, bc): 1, (bc, d): 1}
    # overlapping occurrences merge left to right: a a a -> (aa) a
    assert merge_word([1, 1, 1], (1, 1), 5)[0] == [5, 1]
    assert merge_word([1, 1, 1, 1], (1, 1), 5)[0] == [5, 5]


def test_training_by_hand():
    # 'ab' occurs 3 times in '▁ab ▁ab ▁abc', 'bc' once: the first merge is (a, b).
    vocab, merges = train_bpe({"▁ab": 2, "▁abc": 1}, vocab_size=7)
    assert vocab[:5] == [UNK, "a", "b", "c", "▁"]
    assert merges == [("a", "b"), ("▁", "ab")]
    assert vocab[5:] == ["ab", "▁ab"]


def test_alphabet_symbols_get_ids_even_if_unseen():
    # byte-level BPE passes all 256 byte characters: they are sorted in with the seen ones
    vocab, merges = train_bpe({"ab": 2}, vocab_size=6, alphabet="zc")
    assert vocab == [UNK, "a", "b", "c", "z", "ab"] and merges == [("a", "b")]
    assert BPETokenizer(vocab, merges).encode_word("zab") == [4, 5]


@pytest.mark.parametrize("text", [
    "low low low lower lower newest newest widest",     # ties at the first merge
    "hug hug hug pug pug pun bun hugs hugs",
    "aaaa aaa aa a abab baba",                          # overlapping pairs, repeated letters
    "ab ba ab ba abc cab bca",
])
@pytest.mark.parametrize("vocab_size", [10, 14, 20, 40])
def test_same_merges_as_tokenizers_on_toy_corpora(text, vocab_size):
    ours = BPETokenizer.train(text, vocab_size)
    theirs = hf_train([text], vocab_size)
    assert ours.merges == hf_merges(theirs)
    assert ours.token_to_id == theirs.get_vocab()


def test_same_merges_as_tokenizers_on_movie_reviews(trained):
    ours, theirs = trained
    assert len(ours.vocab) == theirs.get_vocab_size() == 1000
    assert ours.merges == hf_merges(theirs)            # same merges, same order: ties broken alike
    assert ours.token_to_id == theirs.get_vocab()      # same ids


def test_same_ids_as_tokenizers_on_held_out_text(trained, movie_reviews):
    ours, _ = trained
    hf = to_hf_tokenizer(ours)                         # our merges loaded into tokenizers' BPE model
    held_out = list(movie_reviews["validation"]["text"]) + list(movie_reviews["test"]["text"])
    n_tokens = 0
    for text in held_out:
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids
        n_tokens += len(ids)
    assert n_tokens > 100_000


def test_round_trip(trained, movie_reviews):
    ours, _ = trained
    for text in movie_reviews["test"]["text"]:
        normalised = " ".join(text.split())            # decoding restores single spaces
        assert ours.decode(ours.encode(text)) == normalised


def test_unknown_characters_become_unk(trained):
    ours, _ = trained
    ids = ours.encode("good 电影 😀")
    unk = ours.token_to_id[UNK]
    assert ids.count(unk) == 3
    assert ours.decode(ids) == f"good {UNK}{UNK} {UNK}"
    assert to_hf_tokenizer(ours).encode("good 电影 😀").ids == ids


def test_same_merges_and_ids_as_tokenizers_on_chinese():
    # Thousands of CJK characters and full-width digits: the code-point order of the initial
    # alphabet decides the ties here too.
    from companion.corpora import load_peoples_daily

    data = load_peoples_daily()
    train = [" ".join(words) for words in data["train"][:3000]["words"]]   # gold words as the "words"
    ours = BPETokenizer.train(train, vocab_size=5000)
    theirs = hf_train(train, vocab_size=5000)
    assert len(ours.merges) > 500
    assert ours.merges == hf_merges(theirs)
    assert ours.token_to_id == theirs.get_vocab()
    hf = to_hf_tokenizer(ours)
    for text in data["test"][:200]["text"]:
        assert ours.encode(text) == hf.encode(text).ids


@pytest.mark.parametrize("bad", [-1, 18, 1000])
def test_decode_rejects_ids_outside_the_vocabulary(bad):
    tok = BPETokenizer.train("low low low lower lower newest newest widest", vocab_size=18)
    assert len(tok) == 18 and tok.decode([len(tok) - 1]) == tok.vocab[-1].replace("▁", " ").lstrip(" ")
    # -1 used to decode to the last token, like a Python list index, and 18 to raise a bare IndexError
    with pytest.raises(ValueError, match=rf"token id {bad} is not in the vocabulary.*0 to 17.*vocab_size 18"):
        tok.decode([5, bad])
