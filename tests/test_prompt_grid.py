"""The prompt-grid recipe: its sampling of sentences and demonstrations, its scoring, a quick run, the
shipped copy."""

import companion  # noqa: F401  (first: offline Hugging Face cache)

import json
from pathlib import Path

import numpy as np
import pytest

from companion import prompt_grid as pg
from companion import recipes

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = np.array([0, 1] * 20)


def test_validation_sample_is_balanced_sorted_and_the_same_each_time():
    sample = pg.validation_sample(LABELS, 10)
    assert list(sample) == sorted(sample) and len(set(sample)) == 10
    assert LABELS[sample].sum() == 5
    assert np.array_equal(sample, pg.validation_sample(LABELS, 10))
    assert not np.array_equal(sample, pg.validation_sample(LABELS, 10, seed=1))


@pytest.mark.parametrize("n", [0, 7])
def test_validation_sample_refuses_an_odd_or_empty_size(n):
    with pytest.raises(ValueError, match="even number"):
        pg.validation_sample(LABELS, n)


def test_validation_sample_refuses_more_than_a_label_has():
    with pytest.raises(ValueError, match="only 20 sentences of label 0"):
        pg.validation_sample(LABELS, 42)


def test_random_demonstrations_are_the_chapters_draws():
    picks = pg.pick_demonstrations(LABELS, 4, 2)
    expected = np.random.default_rng([4, 2]).choice(len(LABELS), 4, replace=False)
    assert np.array_equal(picks, expected)


@pytest.mark.parametrize("k", [2, 4, 5, 8])
def test_balanced_demonstrations_hold_both_labels_equally(k):
    for draw in range(5):
        picks = pg.pick_demonstrations(LABELS, k, draw, balanced=True)
        assert len(set(picks)) == k and abs(2 * LABELS[picks].sum() - k) <= 1


def test_an_order_permutes_the_same_demonstrations():
    picks = pg.pick_demonstrations(LABELS, 4, 0)
    assert np.array_equal(pg.pick_demonstrations(LABELS, 4, 0, order=[3, 2, 1, 0]), picks[::-1])


@pytest.mark.parametrize("kw, message", [({"k": 0}, "at least 1"), ({"k": 3, "order": [0, 1, 1]}, "permutation")])
def test_bad_demonstration_requests_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        pg.pick_demonstrations(LABELS, draw=0, **kw)


def test_orders_are_distinct_start_with_the_drawn_one_and_stop_at_k_factorial():
    found = pg.orders(4, 0, 5)
    assert found[0] == [0, 1, 2, 3] and len(found) == 5
    assert len({tuple(o) for o in found}) == 5 and all(sorted(o) == [0, 1, 2, 3] for o in found)
    assert found == pg.orders(4, 0, 5)
    assert len(pg.orders(2, 0, 5)) == 2


def test_accuracies_raw_calibrated_and_share_positive():
    # two sentences (labels 1, 0), then three content-free rows that lean to label 1
    probs = np.array([[0.3, 0.7], [0.45, 0.55], [0.4, 0.6], [0.4, 0.6], [0.4, 0.6]])
    a = pg.accuracies(np.log(probs), [1, 0])
    assert a == {"accuracy": 0.5, "calibrated": 1.0, "says_positive": 1.0}


def test_accuracies_refuse_rows_that_do_not_match_the_labels():
    with pytest.raises(ValueError, match=r"expected \(2 \+ 3, 2\)"):
        pg.accuracies(np.zeros((4, 2)), [1, 0])


def test_word_problems_are_reproducible_two_step_problems_with_whole_answers():
    problems = pg.word_problems(8)
    assert problems == pg.word_problems(8) and len(problems) == 8
    assert all(isinstance(p["answer"], int) and p["answer"] > 0 for p in problems)
    assert len({p["question"] for p in problems}) == 8
    first = pg.word_problems(1)[0]["question"]  # "... has X apples, buys Y more and then eats Z ..."
    x, y, z = (int(n) for n in __import__("re").findall(r"\d+", first))
    assert pg.word_problems(1)[0]["answer"] == x + y - z


@pytest.mark.parametrize("text, style, number", [
    ("12", "direct", 12), ("It is 7 apples, not 8.", "direct", 7), ("none", "direct", None),
    ("3 * 4 = 12, then 12 + 5 = 17. The answer is 17.", "step by step", 17),
    ("The answer is 1,200 and 4 boxes", "step by step", 1200),
    ("3 + 4 = 7", "step by step", 7), ("no number", "step by step", None),
])
def test_final_number(text, style, number):
    assert pg.final_number(text, style) == number


def test_final_number_refuses_an_unknown_style():
    with pytest.raises(ValueError, match="style must be one of"):
        pg.final_number("1", "verbose")


def test_the_command_refuses_steps_and_max_steps(capsys):
    for flag in ("--steps", "--max-steps"):
        with pytest.raises(SystemExit):
            recipes.main(["prompt-grid", flag, "3", "--out", "/tmp/never-written"])
        assert "trains nothing" in capsys.readouterr().err


def test_run_grid_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="draws"):
        pg.run_grid(tmp_path, draws=[])
    with pytest.raises(ValueError, match="subset"):
        pg.run_grid(tmp_path, subset=3)


@pytest.mark.slow
def test_a_quick_run_writes_scores_generations_and_results(tmp_path):
    companion.resources.require("smollm2", "polarity")
    r = pg.run_grid(tmp_path, subset=4, draws=[0, 1], shots=(0, 2), n_orders=2, cot_problems=1,
                    cot_tokens={"direct": 2, "step by step": 3})
    assert pg.shipped_results(tmp_path) == r
    scores = pg.load_scores(tmp_path)
    assert scores["val/template/instruction"].shape == (4 + 3, 6)
    assert scores["test/zero-shot"].shape == (4 + 3, 2) and scores["val/k2/draw1"].dtype == np.float32
    assert {row["k"] for row in r["validation"]["few_shot"]} == {0, 2}
    chosen = r["chosen_on_validation"]
    assert (chosen["k"] == 2) == ("few_shot" in r["test"]) == bool(r["validation"]["orders"])
    from companion.corpora import load_polarity

    val_y = np.array(load_polarity()["validation"]["label"])[scores["val/sample"]]
    assert sorted(val_y) == [0, 0, 1, 1]
    for row in r["validation"]["templates"]:  # the rows are the shipped log-probabilities' accuracies
        j = list(pg.VERBALIZERS).index(row["verbalizer"])
        logp = scores[f"val/template/{row['template']}"][:, 2 * j:2 * j + 2]
        assert pg.accuracies(logp, val_y)["accuracy"] == row["accuracy"]
    problems = pg.load_cot(tmp_path)
    assert len(problems) == 1 and set(problems[0]) >= {"question", "answer", "direct", "step by step"}
    assert r["config"]["subset"] == 4 and r["threads"] == 1 and r["wall_seconds"] > 0
    (tmp_path / "cot.json").write_text("[]")
    with pytest.raises(ValueError, match="differs from the sha256"):
        pg.load_cot(tmp_path)


def test_the_shipped_results_are_a_full_run_with_small_intact_artifacts():
    folder = recipes.RESULTS / pg.KEY
    r = pg.shipped_results()
    assert r["config"]["subset"] is None and r["config"]["n_validation"] == pg.N_VAL
    assert r["config"]["n_test"] == 400 and r["config"]["draws"] == list(pg.DRAWS)
    assert sum(p.stat().st_size for p in Path(folder).iterdir()) < 1_000_000
    scores = pg.load_scores()
    k = r["chosen_on_validation"]["k"]
    assert all(scores[f"test/k{k}/draw{d}"].shape == (403, 2) for d in pg.DRAWS)
    assert json.loads((folder / "results.json").read_text())["artifacts"].keys() == {"scores.npz", "cot.json"}
