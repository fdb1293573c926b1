"""Tests of companion.ngram: proper distributions, hand-computed values, perplexity, <unk>, errors."""

import math

import pytest

from companion.ngram import BOS, EOS, SMOOTHING_METHODS, UNK, NGramLM

# Tiny corpus. Padded: <s> a b a </s> | <s> b a </s> | <s> c </s>
TINY = [["a", "b", "a"], ["b", "a"], ["c"]]
CONTEXTS = [(), ("a",), ("b",), ("a", "b"), ("b", "a"), ("c", "c"), ("zzz", "a"), ("a", "zzz"), (BOS,)]


@pytest.fixture(scope="module")
def tiny() -> NGramLM:
    return NGramLM(order=3).fit(TINY)


@pytest.mark.parametrize("smoothing", SMOOTHING_METHODS)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_every_method_and_order_is_a_distribution(tiny, smoothing, order):
    lm = tiny.with_settings(order=order, smoothing=smoothing, k=0.5, lam=0.6, discount=0.8)
    for context in CONTEXTS:
        probs = [lm.prob(w, context) for w in lm.vocab]
        assert all(p >= 0 for p in probs)
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12), (smoothing, order, context)


@pytest.mark.parametrize("smoothing", ["add_k", "interpolated", "absolute", "kneser_ney"])
def test_distribution_on_a_real_sized_vocabulary(smoothing):
    words = "the cat sat on the mat and the dog sat on the log while a cat ran".split()
    sentences = [words[i:i + 5] for i in range(0, len(words), 3)] + [list("abcabd")]
    lm = NGramLM(order=4, smoothing=smoothing, k=0.1).fit(sentences)
    for context in [("the", "cat", "sat"), ("on", "the"), ("sat", "on", "the"), ("never", "seen")]:
        dist = lm.distribution(context)
        assert list(dist) != [] and set(dist) == set(lm.vocab)
        assert math.fsum(dist.values()) == pytest.approx(1.0, abs=1e-12)
        assert list(dist.values()) == sorted(dist.values(), reverse=True)


def test_counts_and_vocabulary(tiny):
    assert tiny.vocab == [EOS, UNK, "a", "b", "c"]
    assert tiny.count(["a"]) == 3 and tiny.count([EOS]) == 3 and tiny.count([UNK]) == 0
    assert tiny.count([BOS, "b"]) == 1 and tiny.count(["b", "a"]) == 2
    assert tiny.count(["b", "a", EOS]) == 2 and tiny.count(["a", "b", "a"]) == 1
    with pytest.raises(ValueError):
        tiny.count(["a", "b", "a", EOS])
    assert tiny.count_of_counts(1) == {3: 2, 2: 1, 1: 1}     # a 3, </s> 3, b 2, c 1
    assert tiny.count_of_counts(3) == {1: 4, 2: 1}            # (b a </s>) twice
    assert tiny.followers([BOS]) == {"a": 1, "b": 1, "c": 1}
    assert tiny.followers(["a"]) == {"b": 1, EOS: 2}
    assert tiny.followers(["zzz"]) == tiny.followers([UNK]) == {}
    assert tiny.followers([]) == {"a": 3, "b": 2, "c": 1, EOS: 3}
    with pytest.raises(ValueError):
        tiny.followers(["a", "b", "a"])


def test_mle_by_hand(tiny):
    lm = tiny.with_settings(order=2, smoothing="mle")
    assert lm.prob("b", ["a"]) == pytest.approx(1 / 3)  # a is followed by b once, by </s> twice
    assert lm.prob(EOS, ["a"]) == pytest.approx(2 / 3)
    assert lm.prob("c", ["a"]) == 0.0
    assert lm.prob("a") == pytest.approx(1 / 3)  # P(a | <s>): 1 of the 3 sentences starts with a
    # The longest seen suffix: a trigram model with the unseen context (c, a) uses (a) alone.
    assert tiny.with_settings(smoothing="mle").prob("b", ["c", "a"]) == pytest.approx(1 / 3)
    assert lm.perplexity([["c", "a"]]) == math.inf  # the bigram (c a) was never seen


def test_add_k_by_hand(tiny):
    lm = tiny.with_settings(order=2, smoothing="add_k", k=1.0)  # |V| = 5
    assert lm.prob("b", ["a"]) == pytest.approx((1 + 1) / (3 + 5))
    assert lm.prob("c", ["a"]) == pytest.approx((0 + 1) / (3 + 5))
    lm = tiny.with_settings(order=3, smoothing="add_k", k=0.5)
    assert lm.prob(EOS, ["b", "a"]) == pytest.approx((2 + 0.5) / (2 + 0.5 * 5))
    assert lm.prob("a", ["c", "c"]) == pytest.approx(1 / 5)  # unseen context: uniform


def test_interpolated_by_hand(tiny):
    lm = tiny.with_settings(order=2, smoothing="interpolated", lam=0.6)
    unigram = 0.6 * 3 / 9 + 0.4 * 1 / 5  # a: 3 of the 9 unigram tokens (a a a b b c </s> </s> </s>)
    assert lm.prob("a", ["b"]) == pytest.approx(0.6 * 2 / 2 + 0.4 * unigram)
    assert lm.with_settings(order=1).prob("a", ["b"]) == pytest.approx(unigram)


def test_absolute_discounting_by_hand(tiny):
    lm = tiny.with_settings(order=2, smoothing="absolute", discount=0.5)
    # unigram: counts a 3, b 2, c 1, </s> 3 (total 9, 4 types); then context a: b 1, </s> 2.
    p1_c = 0.5 / 9 + 0.5 * 4 / 9 * (1 / 5)
    assert lm.prob("c", ["a"]) == pytest.approx(0 + 0.5 * 2 / 3 * p1_c)
    p1_b = 1.5 / 9 + 0.5 * 4 / 9 * (1 / 5)
    assert lm.prob("b", ["a"]) == pytest.approx(0.5 / 3 + 0.5 * 2 / 3 * p1_b)


def test_kneser_ney_by_hand(tiny):
    lm = tiny.with_settings(order=2, smoothing="kneser_ney", discount=0.5)
    # Continuation counts (distinct left neighbours): a {<s>, b} 2, b {<s>, a} 2, c {<s>} 1,
    # </s> {a, c} 2: total 7, 4 types.
    p1_c = 0.5 / 7 + 0.5 * 4 / 7 * (1 / 5)
    assert lm.prob("c", ["a"]) == pytest.approx(0.5 * 2 / 3 * p1_c)
    # A trigram model starting a sentence: context (<s>) keeps raw counts (a 1, b 1, c 1).
    tri = tiny.with_settings(smoothing="kneser_ney", discount=0.5)
    p1_a = 1.5 / 7 + 0.5 * 4 / 7 * (1 / 5)
    assert tri.prob("a", []) == pytest.approx(0.5 / 3 + 0.5 * 3 / 3 * p1_a)
    # Kneser-Ney and absolute discounting differ only in the lower-order counts.
    absolute = tiny.with_settings(order=2, smoothing="absolute", discount=0.5)
    assert lm.prob("a", ["a"]) != pytest.approx(absolute.prob("a", ["a"]))


def test_kneser_ney_prefers_words_with_many_left_neighbours():
    # "francisco" is frequent but only ever after "san"; "glasses" follows many words.
    sents = [["san", "francisco"]] * 6 + [[w, "glasses"] for w in ("my", "your", "his", "her")]
    sents += [["new", "x"], ["old", "y"]]
    kn = NGramLM(order=2, smoothing="kneser_ney").fit(sents)
    ab = kn.with_settings(smoothing="absolute")
    assert ab.prob("francisco", ["new"]) > ab.prob("glasses", ["new"])
    assert kn.prob("francisco", ["new"]) < kn.prob("glasses", ["new"])


def test_chain_rule_and_perplexity_agree(tiny):
    lm = tiny.with_settings(smoothing="kneser_ney")
    sentence = ["b", "a", "b"]
    by_hand = [lm.prob("b", []), lm.prob("a", ["b"]), lm.prob("b", ["b", "a"]), lm.prob(EOS, sentence)]
    assert lm.token_logprobs(sentence) == pytest.approx([math.log(p) for p in by_hand])
    assert lm.logprob(sentence) == pytest.approx(math.log(math.prod(by_hand)))
    sentences = [sentence, ["c"]]
    n = 4 + 2
    expected = math.exp(-(lm.logprob(sentence) + lm.logprob(["c"])) / n)
    assert lm.perplexity(sentences) == pytest.approx(expected)
    # Only the last order-1 tokens of a context matter.
    assert lm.prob("a", ["c", "b", "a", "b"]) == lm.prob("a", ["a", "b"])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny):
    # add-k with a huge k ignores the counts: every token gets 1/|V|.
    uniform = tiny.with_settings(smoothing="add_k", k=1e12)
    assert uniform.prob("a", ["b"]) == pytest.approx(1 / 5)
    assert uniform.perplexity([["a", "b", "c"], ["zzz"]]) == pytest.approx(5.0, rel=1e-9)
    # An unseen context under add-k is exactly uniform, whatever k.
    assert tiny.with_settings(order=2, smoothing="add_k", k=1.0).prob("b", ["zzz"]) == 1 / 5


def test_unknown_words(tiny):
    lm = tiny.with_settings(smoothing="kneser_ney")
    assert lm.prob("never-seen", ["a"]) == lm.prob(UNK, ["a"]) > 0
    assert lm.prob("b", ["never-seen"]) == lm.prob("b", [UNK])
    assert lm.token_logprobs(["q", "r"]) == lm.token_logprobs([UNK, UNK])
    # A vocabulary cut-off: tokens seen fewer than min_count times are counted as <unk>.
    cut = NGramLM(order=2, min_count=2).fit(TINY)
    assert cut.vocab == [EOS, UNK, "a", "b"]
    assert cut.count([UNK]) == 1 and cut.count([BOS, UNK]) == 1
    assert cut.prob("c", []) == cut.prob(UNK, [])
    assert math.fsum(cut.distribution(["c"]).values()) == pytest.approx(1.0)


def test_characters_are_tokens_of_a_string():
    lm = NGramLM(order=3, smoothing="kneser_ney").fit(["我爱北京", "我爱你"])
    assert lm.vocab == [EOS, UNK, "京", "你", "北", "我", "爱"]
    assert lm.prob("爱", "我") == lm.prob("爱", ["我"])
    assert lm.count("我爱") == 2 and lm.count("爱北京") == 1
    assert lm.logprob("我爱你") == pytest.approx(lm.logprob(["我", "爱", "你"]))
    assert math.fsum(lm.distribution("我爱").values()) == pytest.approx(1.0)


def test_with_settings_shares_counts_and_leaves_the_original(tiny):
    other = tiny.with_settings(order=1, smoothing="add_k")
    assert other._raw is tiny._raw
    assert (tiny.order, tiny.smoothing) == (3, "kneser_ney")
    refit = NGramLM(order=1, smoothing="add_k").fit(TINY)
    for w in refit.vocab:
        assert other.prob(w, ["a"]) == pytest.approx(refit.prob(w, ["a"]))


@pytest.mark.parametrize("kwargs", [
    dict(order=0), dict(order=2.5), dict(smoothing="good_turing"), dict(k=0), dict(lam=1.0),
    dict(discount=0.0), dict(discount=1.5), dict(min_count=0),
])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        NGramLM(**kwargs)


def test_bad_input(tiny):
    with pytest.raises(RuntimeError, match="fit"):
        NGramLM().prob("a")
    with pytest.raises(ValueError):
        NGramLM().fit([[], []])
    with pytest.raises(ValueError):
        NGramLM().fit([["a", EOS]])
    with pytest.raises(ValueError):
        tiny.prob(BOS, ["a"])
    with pytest.raises(ValueError):
        tiny.prob("a", ["a", EOS])
    with pytest.raises(ValueError):
        tiny.with_settings(order=4)
    with pytest.raises(ValueError):
        tiny.with_settings(min_count=3)
    with pytest.raises(ValueError):
        tiny.perplexity([])
