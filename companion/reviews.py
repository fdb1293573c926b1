"""The Chinese-reviews recipe (reviews-zh): a small character-level BERT trained from scratch with
`transformers.Trainer` until its validation loss stops improving, compared with character n-grams.

The fine-tuning chapter first trained this model for 150 steps, while its validation loss was still
falling. `run_reviews` trains it to convergence instead: `EarlyStoppingCallback` ends every full run
(the step cap is far away), the checkpoint with the lowest validation loss is kept, and its test
accuracy is measured once per seed. The longest review prefix the model reads (`max_length`) and
the peak learning rate are chosen on the validation split of the first seed only (lowest validation
loss); that comparison is recorded in results.json.

    python -m companion.reviews                                # full recipe into runs/reviews-zh
    python -m companion.reviews --max-steps 4 --subset 64 --seeds 0 --out /tmp/rz   # a quick check

Each seed's model (`save_pretrained`, safetensors, ~1 MB) and vocabulary (vocab.json) land in
out/seed-N; out/results.json holds the configuration, split sizes, per-seed runs (steps, validation
history, test probabilities), mean ± std over seeds, the character n-gram baseline (C chosen on
validation), a paired bootstrap of model vs n-grams on the test set, every artifact's sha256 and the
environment. `load_shipped` + `evaluate` reproduce a seed's recorded test accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from companion.device import pick_device
from companion.finetune import paired_bootstrap
from companion.provenance import check_run_arguments, environment, seed_summary, verified_results
from companion.resources import sha256

RECIPE = "reviews-zh"
SHIPPED = Path(__file__).resolve().parent / "results" / RECIPE  # the copy the chapter reads
SPECIALS = ["[PAD]", "[UNK]", "[CLS]"]  # ids 0, 1, 2: padding, unknown character, classification token
NGRAM_CS = (1.0, 3.0, 10.0, 30.0)  # the baseline's inverse regularisation strengths, chosen on validation
# settings compared on the validation split (first seed) by the full recipe: review prefix x peak learning rate
SEARCH = tuple({"max_length": length, "lr": lr} for length in (48, 96, 192) for lr in (1e-3, 3e-4))


@dataclass(frozen=True)
class ReviewsConfig:
    """Model and training settings of the character BERT."""

    max_length: int = 48  # [CLS] + the first max_length - 1 characters
    min_count: int = 2  # characters seen fewer times in train become [UNK]
    hidden_size: int = 64
    layers: int = 1
    heads: int = 4
    intermediate_size: int = 256
    lr: float = 1e-3
    batch_size: int = 32
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_steps: int = 25
    patience: int = 10  # evaluations without a lower validation loss before stopping (250 steps, 2 epochs)
    max_steps: int = 5000  # a cap far beyond where early stopping ends a full run (40 epochs)


def build_vocab(texts: Sequence[str], min_count: int = 2) -> list[str]:
    """[PAD], [UNK], [CLS] and every character seen at least `min_count` times, sorted."""
    counts = Counter("".join(texts))
    return SPECIALS + sorted(c for c, n in counts.items() if n >= min_count)


def encode(texts: Sequence[str], labels: Sequence[int], vocab: Sequence[str], max_length: int) -> list[dict]:
    """[CLS] + the first max_length - 1 characters of each text as ids, with attention mask and label."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    char_id = {c: i for i, c in enumerate(vocab)}
    unk, cls = char_id["[UNK]"], char_id["[CLS]"]
    rows = []
    for text, label in zip(texts, labels):
        ids = [cls] + [char_id.get(c, unk) for c in text[: max_length - 1]]
        rows.append({"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), dtype=torch.long),
                     "labels": torch.tensor(int(label))})
    return rows


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Pad ids and masks with 0 ([PAD]; 0 = ignore), stack the labels."""
    batch = {key: pad_sequence([e[key] for e in examples], batch_first=True) for key in examples[0] if key != "labels"}
    batch["labels"] = torch.stack([e["labels"] for e in examples])
    return batch


def bert_config(vocab_size: int, config: ReviewsConfig):
    """The BertConfig of the character model: one small layer over characters, two labels."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.layers,
                      num_attention_heads=config.heads, intermediate_size=config.intermediate_size,
                      max_position_embeddings=config.max_length, num_labels=2)


@torch.no_grad()
def evaluate(model, vocab: Sequence[str], texts: Sequence[str], labels: Sequence[int],
             batch_size: int = 64) -> tuple[float, np.ndarray]:
    """Accuracy and P(positive) of every text, in order (the model in eval mode, on its device)."""
    if len(texts) == 0:
        raise ValueError("no texts to evaluate")
    model.eval()
    device = next(model.parameters()).device
    data = encode(texts, labels, vocab, model.config.max_position_embeddings)
    probs = []
    for start in range(0, len(data), batch_size):
        batch = collate(data[start: start + batch_size])
        batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        probs.append(torch.softmax(logits.float(), -1)[:, 1].cpu())
    p = torch.cat(probs).numpy().astype(np.float64)
    return float(np.mean((p > 0.5) == (np.asarray(labels) == 1))), p


def ngram_baseline(texts: dict[str, list[str]], labels: dict[str, np.ndarray]) -> dict:
    """TF-IDF character 1-3-grams + logistic regression, C chosen on validation accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    tfidf = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    X = {"train": tfidf.fit_transform(texts["train"])}
    X |= {split: tfidf.transform(texts[split]) for split in ("validation", "test")}
    fits = {C: LogisticRegression(C=C, max_iter=2000).fit(X["train"], labels["train"]) for C in NGRAM_CS}
    val = {C: float(np.mean(fit.predict(X["validation"]) == labels["validation"])) for C, fit in fits.items()}
    best = max(NGRAM_CS, key=lambda C: val[C])  # the first (smallest) C among ties
    pred = fits[best].predict(X["test"])
    return {"model": "TF-IDF character 1-3-grams (min_df 2, sublinear tf) + LogisticRegression",
            "features": int(X["train"].shape[1]), "C": best,
            "validation_accuracy_by_C": {str(C): v for C, v in val.items()},
            "validation_accuracy": val[best], "test_accuracy": float(np.mean(pred == labels["test"])),
            "test_correct": (pred == labels["test"]).tolist()}


def _history(log_history: list[dict]) -> list[dict]:
    """Training loss, validation loss and accuracy at each evaluation step."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        row = rows.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        for key in ("loss", "eval_loss", "eval_accuracy"):
            if key in entry:
                row[key] = round(float(entry[key]), 6)
    return [row for _, row in sorted(rows.items()) if "eval_loss" in row]


def _accuracy_metric(prediction) -> dict[str, float]:
    """compute_metrics for Trainer: accuracy of the argmax."""
    return {"accuracy": float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))}


def train_one(config: ReviewsConfig, vocab: list[str], texts: dict[str, list[str]], labels: dict[str, np.ndarray],
              seed: int, *, max_steps: int | None = None) -> tuple[object, dict]:
    """Train one seed with Trainer until validation loss stops improving; (best model on CPU, figures)."""
    from transformers import (BertForSequenceClassification, EarlyStoppingCallback, PrinterCallback, Trainer,
                              TrainingArguments, set_seed)

    steps = max_steps if max_steps is not None else config.max_steps
    eval_steps = max(1, min(config.eval_steps, steps // 2))
    data = {split: encode(texts[split], labels[split], vocab, config.max_length) for split in ("train", "validation")}
    device = pick_device()
    set_seed(seed)
    model = BertForSequenceClassification(bert_config(len(vocab), config))
    with tempfile.TemporaryDirectory(prefix="reviews-zh-") as folder:
        args = TrainingArguments(
            output_dir=folder, max_steps=steps, per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=64, learning_rate=config.lr, warmup_steps=min(config.warmup_steps, steps // 10),
            lr_scheduler_type="cosine", weight_decay=config.weight_decay, eval_strategy="steps",
            eval_steps=eval_steps, save_strategy="steps", save_steps=eval_steps, save_only_model=True,
            save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
            greater_is_better=False, logging_steps=eval_steps, seed=seed, data_seed=seed, report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, use_cpu=device.type == "cpu")
        trainer = Trainer(model=model, args=args, data_collator=collate, train_dataset=data["train"],
                          eval_dataset=data["validation"], compute_metrics=_accuracy_metric,
                          callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience)])
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        state = trainer.state
        best = state.best_model_checkpoint
        best_step = int(Path(best).name.split("-")[-1]) if best else state.global_step
        model = trainer.model.to("cpu").eval()
    history = _history(state.log_history)
    run = {"seed": seed, "stopped_step": int(state.global_step), "best_step": best_step,
           "stopped_early": int(state.global_step) < steps, "max_steps": steps,
           "best_validation_loss": min((h["eval_loss"] for h in history), default=None),
           "train_seconds": round(seconds, 2), "history": history}
    return model, run


def _load_data(subset: int | None) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """The Chinese reviews' texts and labels per split (the first `subset` of each split if given)."""
    from companion.corpora import load_chinese_reviews

    reviews = load_chinese_reviews()
    texts = {split: list(reviews[split]["text"])[:subset] for split in ("train", "validation", "test")}
    labels = {split: np.array(reviews[split]["label"])[:subset] for split in ("train", "validation", "test")}
    return texts, labels


def save_seed(folder: Path, model, vocab: list[str]) -> None:
    """The model (safetensors) and its vocabulary (vocab.json) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")


def load_shipped(folder: Path, seed: int) -> tuple[object, list[str]]:
    """(model in eval mode on the CPU, vocabulary) of one seed of a reviews-zh results folder."""
    from transformers import BertForSequenceClassification

    path = Path(folder) / f"seed-{seed}"
    if not (path / "model.safetensors").exists():
        raise ValueError(f"no model for seed {seed} in {path}")
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    model = BertForSequenceClassification.from_pretrained(path).eval()
    return model, vocab


def shipped_results(folder: Path | None = None) -> dict:
    """results.json of a reviews-zh folder (default: the shipped copy), every artifact's sha256 checked."""
    return verified_results(Path(folder) if folder is not None else SHIPPED, RECIPE)


def run_reviews(out: Path, *, max_steps: int | None = None, subset: int | None = None,
                seeds: Sequence[int] = (0, 1, 2), config: ReviewsConfig | None = None,
                search: Sequence[dict] | None = SEARCH) -> dict:
    """Train the character BERT once per seed until validation loss stops improving; write out/results.json."""
    seeds = check_run_arguments(seeds, max_steps, subset)
    config = config or ReviewsConfig()
    wall = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts, labels = _load_data(subset)
    vocab = build_vocab(texts["train"], config.min_count)
    models, runs, comparison = {}, {}, []
    if search:  # settings chosen on the validation split, first seed only; the winning run is that seed's run
        candidates = []
        for overrides in search:
            trial = replace(config, **overrides)
            model, run = train_one(trial, vocab, texts, labels, seeds[0], max_steps=max_steps)
            val_acc, _ = evaluate(model, vocab, texts["validation"], labels["validation"])
            comparison.append({**overrides, "seed": seeds[0], "validation_loss": run["best_validation_loss"],
                               "validation_accuracy": round(val_acc, 6), "best_step": run["best_step"],
                               "stopped_step": run["stopped_step"], "train_seconds": run["train_seconds"]})
            candidates.append((trial, model, run))
        best = min(range(len(comparison)), key=lambda i: comparison[i]["validation_loss"])  # first among ties
        config, models[seeds[0]], runs[seeds[0]] = candidates[best]
    for seed in seeds:
        if seed not in runs:
            models[seed], runs[seed] = train_one(config, vocab, texts, labels, seed, max_steps=max_steps)
    artifacts, per_seed = {}, []
    for seed in seeds:
        folder = out / f"seed-{seed}"
        save_seed(folder, models[seed], vocab)
        for path in sorted(folder.iterdir()):
            artifacts[str(path.relative_to(out))] = sha256(path)
        model, saved_vocab = load_shipped(out, seed)  # scored as a reader will score it: from the saved files
        val_acc, val_p = evaluate(model, saved_vocab, texts["validation"], labels["validation"])
        test_acc, test_p = evaluate(model, saved_vocab, texts["test"], labels["test"])
        val_loss = float(-np.mean(np.log(np.where(labels["validation"] == 1, val_p, 1 - val_p).clip(1e-12))))
        per_seed.append({**runs[seed], "test_accuracy": test_acc, "validation_accuracy": val_acc,
                         "validation_loss": round(val_loss, 6),
                         "test_probabilities": [round(float(p), 6) for p in test_p],
                         "weights_bytes": (folder / "model.safetensors").stat().st_size})
    baseline = ngram_baseline(texts, labels)
    test_labels = labels["test"] == 1
    correct = {r["seed"]: (np.array(r["test_probabilities"]) > 0.5) == test_labels for r in per_seed}
    ngram_correct = baseline.pop("test_correct")
    bootstrap = {"mean over seeds": paired_bootstrap(np.mean(list(correct.values()), axis=0), ngram_correct),
                 **{f"seed {s}": paired_bootstrap(c, ngram_correct) for s, c in correct.items()}}
    metrics = {name: seed_summary([r[name] for r in per_seed])
               for name in ("test_accuracy", "validation_accuracy", "validation_loss", "stopped_step", "best_step",
                            "train_seconds")}
    n_params = sum(p.numel() for p in models[seeds[0]].parameters())
    results = {
        "recipe": RECIPE, "config": asdict(config), "vocabulary_size": len(vocab), "parameters": n_params,
        "chosen_on_validation": ({"chosen": dict(search[best]), "by": "lowest validation loss of the best checkpoint",
                                  "seed": seeds[0], "comparison": comparison} if search else None),
        "splits": {split: len(texts[split]) for split in texts}, "seeds": seeds, "max_steps": max_steps,
        "subset": subset, "runs": per_seed, "metrics": metrics, "ngram_baseline": baseline,
        "bootstrap_model_minus_ngrams": bootstrap, "artifacts": artifacts,
        "wall_seconds": round(time.perf_counter() - wall, 1), **environment(pick_device()),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def headline(results: dict) -> str:
    """One line: the character BERT's test accuracy over seeds, where runs stopped, the n-gram baseline."""
    acc = results["metrics"]["test_accuracy"]
    stopped = ", ".join(str(r["stopped_step"]) for r in results["runs"])
    return (f"character BERT test accuracy {acc['mean']:.3f} ± {acc['std']:.3f} over seeds {results['seeds']} "
            f"(stopped at steps {stopped}); character n-grams + LR: {results['ngram_baseline']['test_accuracy']:.3f}")


def main(argv: list[str] | None = None) -> int:
    """Command line: run the recipe and print its headline."""
    parser = argparse.ArgumentParser(prog="python -m companion.reviews", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / RECIPE)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-search", action="store_true", help="skip the search on validation (SEARCH)")
    args = parser.parse_args(argv)
    results = run_reviews(args.out, max_steps=args.max_steps, subset=args.subset, seeds=args.seeds,
                          search=None if args.no_search else SEARCH)
    print(headline(results))
    print(f"wrote {(args.out / 'results.json').resolve()} in {results['wall_seconds']:.0f} s ({results['device']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
