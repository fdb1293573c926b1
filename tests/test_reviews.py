"""The reviews-zh recipe: a few-step run on a subset writes results.json and artifacts that reload."""

import json

import numpy as np
import pytest

from companion.corpora import load_chinese_reviews
from companion.resources import sha256
from companion.reviews import (build_vocab, encode, evaluate, headline, load_shipped, run_reviews,
                               shipped_results)

SUBSET = 64


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, one_thread):
    """A 4-step run on 64 reviews per split, two seeds, with a two-length search."""
    out = tmp_path_factory.mktemp("reviews-zh")
    search = ({"max_length": 16}, {"max_length": 32, "lr": 3e-4})
    results = run_reviews(out, max_steps=4, subset=SUBSET, seeds=(0, 1), search=search)
    return out, results


def test_build_vocab_and_encode():
    vocab = build_vocab(["好好的", "差"], min_count=2)
    assert vocab == ["[PAD]", "[UNK]", "[CLS]", "好"]
    row = encode(["好差好好"], [1], vocab, max_length=3)[0]
    assert row["input_ids"].tolist() == [2, 3, 1]
    assert row["attention_mask"].tolist() == [1, 1, 1] and int(row["labels"]) == 1


def test_results_fields(quick_run):
    out, results = quick_run
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["recipe"] == results["recipe"] == "reviews-zh"
    assert saved["splits"] == {"train": SUBSET, "validation": SUBSET, "test": SUBSET}
    assert [r["seed"] for r in saved["runs"]] == [0, 1]
    for run in saved["runs"]:
        assert run["stopped_step"] <= 4 and run["best_step"] <= run["stopped_step"]
        assert run["history"] and all("eval_loss" in h for h in run["history"])
        assert len(run["test_probabilities"]) == SUBSET and 0 <= run["test_accuracy"] <= 1
        assert run["train_seconds"] > 0
    assert saved["metrics"]["test_accuracy"]["values"] == [r["test_accuracy"] for r in saved["runs"]]
    chosen = saved["chosen_on_validation"]
    assert {c["max_length"] for c in chosen["comparison"]} == {16, 32}
    assert saved["config"]["max_length"] == chosen["chosen"]["max_length"]
    assert saved["config"]["lr"] == chosen["chosen"].get("lr", 1e-3)
    baseline = saved["ngram_baseline"]
    assert baseline["C"] in (1.0, 3.0, 10.0, 30.0) and 0 <= baseline["test_accuracy"] <= 1
    boot = saved["bootstrap_model_minus_ngrams"]["mean over seeds"]
    assert boot["low"] <= boot["difference"] <= boot["high"]
    for key in ("wall_seconds", "device", "versions", "git_commit", "date"):
        assert key in saved
    line = headline(saved)
    assert line.startswith("character BERT test accuracy") and "[0, 1]" in line and "n-grams + LR" in line


def test_artifacts_hashes(quick_run):
    out, results = quick_run
    names = set(results["artifacts"])
    for seed in (0, 1):
        assert {f"seed-{seed}/model.safetensors", f"seed-{seed}/config.json", f"seed-{seed}/vocab.json"} <= names
    for name, digest in results["artifacts"].items():
        assert sha256(out / name) == digest
    assert not any(p.name.startswith("checkpoint-") for p in out.rglob("*"))  # Trainer's checkpoints stay elsewhere
    assert shipped_results(out)["runs"] == results["runs"]


def test_shipped_model_reproduces_test_accuracy(quick_run):
    out, results = quick_run
    test = load_chinese_reviews()["test"]
    texts, labels = list(test["text"])[:SUBSET], list(test["label"])[:SUBSET]
    for run in results["runs"]:
        model, vocab = load_shipped(out, run["seed"])
        acc, probs = evaluate(model, vocab, texts, labels)
        assert acc == run["test_accuracy"]
        assert np.abs(probs - np.array(run["test_probabilities"])).max() < 2e-4


def test_tampered_or_missing_artifact_raises(quick_run, tmp_path):
    out, results = quick_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_bytes((out / "results.json").read_bytes())
    for name in results["artifacts"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((out / name).read_bytes())
    shipped_results(copy)
    vocab = copy / "seed-1" / "vocab.json"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("[UNK]", "[UNKNOWN]"), encoding="utf-8")
    with pytest.raises(ValueError, match="seed-1/vocab.json"):
        shipped_results(copy)
    vocab.unlink()
    with pytest.raises(ValueError, match="seed-1/vocab.json.*missing"):
        shipped_results(copy)


@pytest.mark.parametrize("kwargs", [{"seeds": ()}, {"seeds": (0, 0)}, {"max_steps": 0}, {"subset": 1}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        run_reviews(tmp_path, **kwargs)
    assert not (tmp_path / "results.json").exists()
