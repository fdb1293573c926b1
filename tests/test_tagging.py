import itertools
import json

import numpy as np
import pytest
import torch

from companion.metrics import IGNORE_INDEX
from companion.tagging import (CRF, MINILM, RECIPES, RESULTS, TaggingConfig, encode_words, load_task,
                               read_conll, rescore, rules_tagger, run_recipe, score, spelling_rule, tag_metrics,
                               word_predictions, write_conll)

# conlleval on these two sentences (a blank line between them) prints
#   processed 10 tokens with 5 phrases; found: 4 phrases; correct: 2.
#   accuracy: ...; precision:  50.00%; recall:  40.00%; FB1:  44.44
#   LOC: precision: 100.00%; recall:  50.00%; FB1:  66.67  1
#   ORG: precision:   0.00%; recall:   0.00%; FB1:   0.00  0
#   PER: precision:  33.33%; recall:  50.00%; FB1:  40.00  3
# worked by hand: an I- tag after O, after another type or at the start of a sentence opens a
# chunk, and no chunk runs across the sentence boundary.
NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
GOLD = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"], ["B-PER", "I-LOC", "O"]]
PRED = [["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "O", "B-PER"], ["I-PER", "I-PER", "O"]]
ids = lambda sentences: [[NAMES.index(t) for t in s] for s in sentences]  # noqa: E731


@pytest.fixture(scope="module")
def tokenizer():
    import companion  # noqa: F401  (the offline cache)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM)


def test_entity_score_is_conllevals_on_a_hand_worked_example():
    s = score(ids(GOLD), ids(PRED), NAMES, "entity")
    assert s == pytest.approx({"precision": 0.5, "recall": 0.4, "f1": 4 / 9})
    from companion.metrics import entity_scores

    per_type = entity_scores(GOLD, PRED).per_type
    assert per_type["f1"].round(4).to_dict() == {"LOC": 0.6667, "ORG": 0.0, "PER": 0.4}
    assert per_type["support"].to_dict() == {"LOC": 2, "ORG": 1, "PER": 2}


def test_compute_metrics_reads_first_subwords_only():
    from transformers import EvalPrediction

    # two sentences padded to 9 tokens: [CLS] words (some with a second piece) [SEP] padding
    labels = np.full((2, 9), IGNORE_INDEX)
    labels[0, 1:8] = ids(GOLD)[0]
    labels[1, [1, 3, 4]] = ids(GOLD)[1]  # the first word has two pieces (1, 2)
    logits = np.zeros((2, 9, len(NAMES)))
    pred = ids(PRED)
    for row, positions in ((0, range(1, 8)), (1, [1, 3, 4])):
        for p, t in zip(positions, pred[row]):
            logits[row, p, t] = 5.0
    logits[1, 2, NAMES.index("B-ORG")] = 9.0  # a later piece: ignored, whatever it predicts
    metrics = tag_metrics(NAMES, "entity")(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == pytest.approx({"precision": 0.5, "recall": 0.4, "f1": 4 / 9})
    accuracy = tag_metrics(NAMES, "accuracy")(EvalPrediction(predictions=logits, label_ids=labels))
    assert accuracy["accuracy"] == pytest.approx(6 / 10)  # by hand: 5 of 7 and 1 of 3 tags


def test_labels_go_to_the_first_subword(tokenizer):
    words, labels = ["Figgy", "Soda", "rocks"], [3, 4, 0]
    row = encode_words(tokenizer, [words], [labels])[0]
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert tokens == ["[CLS]", "fig", "##gy", "soda", "rocks", "[SEP]"]
    assert row["labels"] == [IGNORE_INDEX, 3, IGNORE_INDEX, 4, 0, IGNORE_INDEX]
    assert word_predictions(np.array([row["labels"]]), np.array([row["labels"]])) == [labels]


def test_bad_input_gives_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="2 words but 1 labels"):
        encode_words(tokenizer, [["a", "b"]], [[0]])
    with pytest.raises(ValueError, match="raise max_length"):
        encode_words(tokenizer, [["word"] * 20], [[0] * 20], max_length=8)
    with pytest.raises(ValueError, match="1 sentences but 2 label lists"):
        encode_words(tokenizer, [["a"]], [[0], [0]])
    with pytest.raises(ValueError, match="shape"):
        word_predictions(np.zeros((1, 3)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="metric must be one of"):
        score([[0]], [[0]], NAMES, "f1")
    with pytest.raises(ValueError, match="lr must be positive"):
        TaggingConfig(lr=0)
    with pytest.raises(ValueError, match="layers must be at least 1"):
        TaggingConfig(layers=0)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("conll2003")
    with pytest.raises(ValueError, match="shipped results"):
        run_recipe(RECIPES["twitter-ner"], RESULTS / "twitter-ner")


# ----------------------------------------------------------------------------- CRF


def brute_force(crf, emissions, length):
    """log Z, and the best sequence, of one sequence by enumerating every tag sequence."""
    scores = {}
    for tags in itertools.product(range(crf.n_tags), repeat=length):
        s = crf.start[tags[0]] + crf.end[tags[-1]] + sum(emissions[i, t] for i, t in enumerate(tags))
        s = s + sum(crf.transitions[a, b] for a, b in zip(tags, tags[1:]))
        scores[tags] = s
    log_z = torch.logsumexp(torch.stack(list(scores.values())), 0)
    return log_z, list(max(scores, key=lambda t: scores[t].item())), scores


def test_crf_matches_brute_force_enumeration():
    torch.manual_seed(0)
    crf = CRF(3)
    with torch.no_grad():
        crf.start.normal_()
        crf.end.normal_()
        crf.transitions.normal_()
    emissions = torch.randn(3, 4, 3)
    lengths = [4, 2, 1]
    mask = torch.tensor([[i < n for i in range(4)] for n in lengths])
    tags = torch.randint(0, 3, (3, 4))
    log_z, decoded = crf.log_partition(emissions, mask), crf.decode(emissions, mask)
    gold_scores = crf.score(emissions, tags, mask)
    for b, n in enumerate(lengths):
        z, best, scores = brute_force(crf, emissions[b, :n], n)
        assert log_z[b].item() == pytest.approx(z.item(), abs=1e-5)
        assert decoded[b] == best
        assert gold_scores[b].item() == pytest.approx(scores[tuple(tags[b, :n].tolist())].item(), abs=1e-5)
    nll = crf.nll(emissions, tags, mask)
    nll.backward()
    assert nll.item() > 0 and crf.transitions.grad.abs().sum() > 0


def test_crf_rejects_bad_masks_and_shapes():
    crf = CRF(3)
    with pytest.raises(ValueError, match="prefix"):
        crf.log_partition(torch.zeros(1, 3, 3), torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match="first position"):
        crf.decode(torch.zeros(1, 3, 3), torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match=r"\[batch, length, 3\]"):
        crf.decode(torch.zeros(1, 3, 4))


# ----------------------------------------------------------------------------- baselines, files


def test_spelling_rules_and_the_rules_tagger():
    assert [spelling_rule(w) for w in ["Paris", "1998", "running", "walked", "quickly", "dogs", "tree"]] == [
        "NNP", "CD", "VBG", "VBN", "RB", "NNS", "NN"]
    tag = rules_tagger([["the", "dog", "runs"]], [["DT", "NN", "VBZ"]])
    assert tag(["the", "dogs", "runs", "Rex"]) == ["DT", "NNS", "VBZ", "NNP"]


def test_conll_files_round_trip(tmp_path):
    words = [["a b", "c"], ["d"]]  # a space inside a word becomes _
    path = write_conll(tmp_path / "p.txt", words, [["O", "B-PER"], ["O"]], [["O", "O"], ["B-LOC"]])
    assert path.read_text() == "a_b O O\nc B-PER O\n\nd O B-LOC\n\n"
    assert read_conll(path) == ([["a_b", "c"], ["d"]], [["O", "B-PER"], ["O"]], [["O", "O"], ["B-LOC"]])


# ----------------------------------------------------------------------------- recipes, a few steps


@pytest.mark.parametrize("key", sorted(RECIPES))
def test_recipe_runs_a_few_steps(key, tmp_path, one_thread):
    results = run_recipe(RECIPES[key], tmp_path, max_steps=2, subset=12, seeds=(0, 1), progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and not saved["full_run"] and saved["steps"] == 2
    assert len(saved["search"]["candidates"]) == len(RECIPES[key].grid)
    assert saved["threads"] == 1 and saved["versions"]["transformers"]
    headline = saved["headline"].removeprefix("test_")
    for seed, value in zip((0, 1), saved["metrics"][saved["headline"]]["values"]):
        assert rescore(key, seed, tmp_path)[headline] == pytest.approx(value)  # the file is the number
    assert set(results["baselines"]) >= {"most frequent tag per word"}
    assert results["runs"][0]["reused_search_run"] != results["runs"][1]["reused_search_run"]


def test_the_recipes_command_runs_a_tagging_recipe(tmp_path, one_thread, capsys):
    from companion.recipes import main

    with pytest.raises(SystemExit):
        main(["twitter-ner", "--steps", "3", "--out", str(tmp_path)])
    assert "--max-steps" in capsys.readouterr().err
    assert main(["oanc-pos", "--max-steps", "1", "--subset", "6", "--seeds", "0", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["recipe"] == "oanc-pos"
    assert "test_accuracy" in capsys.readouterr().out


def test_split_sentences_keeps_tags_with_their_characters():
    from companion.tagging import split_sentences

    text = "他说：“好。”我们走吧！对"
    pieces = split_sentences(text, list(range(len(text))))
    assert [t for t, _ in pieces] == ["他说：“好。”我们走吧！", "对"]  # no cut before a closing quote
    assert [tags for _, tags in pieces] == [list(range(12)), [12]]
    with pytest.raises(ValueError, match="2 characters but 1 tags"):
        split_sentences("好。", [0])


def test_peoples_daily_recipe_runs_a_few_steps_and_ships_a_model_that_reproduces_it(tmp_path, one_thread):
    from companion.corpora import PEOPLES_DAILY_NER_TAGS
    from companion.tagging import PEOPLES_DAILY_NER, CharConfig, load_char_tagger, predict_chars, run_named

    results = run_named("peoples-daily-ner", tmp_path, max_steps=3, subset=40, seeds=(0, 1), progress=False)
    assert set(results["variants"]) == {"softmax", "crf"} and not results["full_run"]
    assert len(results["crf_minus_softmax_test_f1"]["values"]) == 2
    assert all(run["steps"] == 3 for v in results["variants"].values() for run in v["runs"])
    from companion.resources import sha256
    for name, digest in results["artifacts"].items():
        assert sha256(tmp_path / name) == digest
    from companion.tagging import peoples_daily_pieces
    test = peoples_daily_pieces(PEOPLES_DAILY_NER.train_lines, subset=40)["test"]
    config = CharConfig(**results["variants"]["crf"]["config"])
    model = load_char_tagger(tmp_path / "crf-seed-1", len(PEOPLES_DAILY_NER_TAGS), config)
    pred = predict_chars(model, test, model.vocab)
    live = score([t for _, t in test], pred, PEOPLES_DAILY_NER_TAGS, "entity")["f1"]
    assert live == pytest.approx(results["variants"]["crf"]["runs"][1]["test_f1"])


def test_peoples_daily_cws_recipe_scores_words_and_ships_a_model_that_reproduces_it(tmp_path, one_thread):
    from companion.corpora import BMES, load_peoples_daily_cws
    from companion.tagging import (PEOPLES_DAILY_CWS, CharConfig, load_char_tagger, peoples_daily_pieces,
                                   predict_chars, run_named)

    results = run_named("peoples-daily-cws", tmp_path, max_steps=3, subset=40, seeds=(0,), progress=False)
    assert results["recipe"] == "peoples-daily-cws" and results["metric"] == "words"
    assert set(results["variants"]) == {"softmax", "crf"}
    data = peoples_daily_pieces(PEOPLES_DAILY_CWS.train_lines, subset=40, task="cws")
    assert "".join(load_peoples_daily_cws()["test"][0]["text"]).startswith(data["test"][0][0])
    config = CharConfig(**results["variants"]["softmax"]["config"])
    model = load_char_tagger(tmp_path / "softmax-seed-0", len(BMES), config)
    pred = predict_chars(model, data["test"], model.vocab)
    live = score([t for _, t in data["test"]], pred, BMES, "words")["f1"]
    assert live == pytest.approx(results["variants"]["softmax"]["runs"][0]["test_f1"])
    with pytest.raises(ValueError, match="task must be one of"):
        peoples_daily_pieces(task="pos")


def test_word_scores_of_bmes_tags_are_those_of_the_words():
    from companion.corpora import BMES, bmes_tags
    from companion.segmentation import segmentation_scores

    ids = {t: i for i, t in enumerate(BMES)}
    gold_words, pred_words = [["迈向", "充满", "希望"], ["的"]], [["迈", "向", "充满", "希望"], ["的"]]
    gold = [[ids[t] for t in bmes_tags(w)] for w in gold_words]
    pred = [[ids[t] for t in bmes_tags(w)] for w in pred_words]
    assert score(gold, pred, BMES, "words") == segmentation_scores(pred_words, gold_words)
    assert score(gold, gold, BMES, "words")["f1"] == 1.0


def test_entity_scores_agree_with_seqeval_on_random_tags():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        gold = [list(rng.choice(NAMES, size=rng.integers(1, 12))) for _ in range(8)]
        pred = [list(rng.choice(NAMES, size=len(g))) for g in gold]
        ours = score(ids(gold), ids(pred), NAMES, "entity")
        assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
        assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
        assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred))


def test_shipped_results_refuse_a_changed_artifact(tmp_path):
    from companion.tagging import shipped_results

    (tmp_path / "weights.bin").write_bytes(b"abc")
    from companion.resources import sha256
    (tmp_path / "results.json").write_text(json.dumps({"artifacts": {"weights.bin": sha256(tmp_path / "weights.bin")}}))
    assert shipped_results("x", tmp_path)["artifacts"]
    (tmp_path / "weights.bin").write_bytes(b"abd")
    with pytest.raises(ValueError, match="differs from the sha256"):
        shipped_results("x", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m companion.recipes nothing"):
        shipped_results("nothing", tmp_path / "missing")
