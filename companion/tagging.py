"""Token classification (序列标注): MiniLM fine-tuned end to end with `Trainer`, a CRF layer, and
the recipes behind the token-classification chapter's tables.

The standard Hugging Face workflow: `encode_words` tokenises pre-split sentences and gives each
word's label to its first subword (-100 elsewhere, `companion.metrics`); `build_tagger` loads
`AutoModelForTokenClassification`, optionally with only the bottom `layers` encoder layers (the
representation is a hyperparameter, chosen on validation); `fine_tune` trains it with `Trainer`,
`DataCollatorForTokenClassification` and a `compute_metrics` that scores entities exactly as
conlleval does (`companion.metrics.entity_scores`) or tags by accuracy. `CRF` is a linear-chain
conditional random field (forward algorithm, Viterbi) on top of `CharTagger`, a character BiLSTM.

    python -m companion.recipes twitter-ner        # search on validation, then 3 seeds: runs/twitter-ner
    python -m companion.recipes oanc-pos           # the same for POS, with the rule baselines
    python -m companion.recipes peoples-daily-ner  # character BiLSTM, softmax vs CRF, 3 seeds each
    python -m companion.recipes peoples-daily-cws  # the same for word segmentation (BMES tags, word F1)
    python -m companion.tagging oanc-pos --max-steps 5 --subset 32 --seeds 0   # a quick check

Each recipe writes `results.json` (every metric as mean ± std over seeds and per seed, the search
on validation, steps, epochs, time, device, threads, versions, commit) and each run's test
predictions in the format conlleval reads (`word gold predicted`, a blank line between
sentences). A fully fine-tuned MiniLM is ~90 MB, so its weights are not shipped; the character
taggers (~1.4 MB each) are. The shipped copies live in companion/results/<key>.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from companion.metrics import IGNORE_INDEX, accuracy, align_labels_with_tokens, entity_scores
from companion.provenance import environment, seed_summary, verified_results

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs")
METRICS = ("entity", "accuracy", "words")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TaggingConfig:
    """Everything that decides one fine-tuning run of a token classifier except its seed."""

    model: str = MINILM
    layers: int | None = None  # keep the bottom `layers` encoder layers (None: all)
    lr: float = 5e-5
    epochs: int = 3
    batch_size: int = 16
    warmup: float = 0.1  # fraction of the steps with a linear warmup, then linear decay to 0
    weight_decay: float = 0.01
    max_length: int = 128

    def __post_init__(self) -> None:
        for name in ("lr", "epochs", "batch_size", "max_length"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"layers must be at least 1 (or None for all), got {self.layers!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")


def encode_words(tokenizer, sentences: Sequence[Sequence[str]], word_labels: Sequence[Sequence[int]],
                 max_length: int = 128) -> list[dict]:
    """Token ids and aligned labels (first subword: the word's label; -100 elsewhere) per sentence."""
    if len(sentences) != len(word_labels):
        raise ValueError(f"{len(sentences)} sentences but {len(word_labels)} label lists")
    rows = []
    for n, (words, labels) in enumerate(zip(sentences, word_labels)):
        if len(words) != len(labels):
            raise ValueError(f"sentence {n}: {len(words)} words but {len(labels)} labels")
        enc = tokenizer(list(words), is_split_into_words=True, truncation=True, max_length=max_length)
        aligned = align_labels_with_tokens(enc.word_ids(), list(labels))
        if sum(label != IGNORE_INDEX for label in aligned) != len(words):
            raise ValueError(f"sentence {n} of {len(words)} words does not fit in {max_length} tokens; "
                             "raise max_length")
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                     "labels": aligned})
    return rows


def word_predictions(predictions: np.ndarray, label_ids: np.ndarray) -> list[list[int]]:
    """One predicted id per word: logits [n, tokens, labels] (or ids [n, tokens]) where labels != -100."""
    predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    if predictions.shape != label_ids.shape:
        raise ValueError(f"predictions have shape {predictions.shape} but labels {label_ids.shape}")
    return [p[y != IGNORE_INDEX].tolist() for p, y in zip(predictions, label_ids)]


def word_labels(label_ids: np.ndarray) -> list[list[int]]:
    """The gold id of every word: the labels that are not -100, one list per sentence."""
    return [y[y != IGNORE_INDEX].tolist() for y in np.asarray(label_ids)]


def score(gold: Sequence[Sequence[int]], pred: Sequence[Sequence[int]], label_names: Sequence[str],
          metric: str) -> dict[str, float]:
    """Entity precision / recall / F1 (conlleval's exact-match), tag accuracy, or word P / R / F1 of
    BMES segmentation tags ("words"), from label ids."""
    if metric == "entity":
        names = list(label_names)
        s = entity_scores([[names[t] for t in g] for g in gold], [[names[t] for t in p] for p in pred])
        return {"f1": s.f1, "precision": s.precision, "recall": s.recall}
    if metric == "accuracy":
        return {"accuracy": accuracy([t for p in pred for t in p], [t for g in gold for t in g])}
    if metric == "words":  # BMES tags: word precision / recall / F1 over the words' character spans
        from companion.corpora import words_from_bmes
        from companion.segmentation import segmentation_scores

        names = list(label_names)
        as_words = [[words_from_bmes("x" * len(tags), [names[t] for t in tags]) for tags in seqs]
                    for seqs in (pred, gold)]
        return segmentation_scores(*as_words)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def tag_metrics(label_names: Sequence[str], metric: str) -> Callable:
    """A `compute_metrics` for `Trainer`: word-level scores from an `EvalPrediction`."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        return score(word_labels(label_ids), word_predictions(logits, label_ids), label_names, metric)

    return compute_metrics


# ----------------------------------------------------------------------------- fine-tuning


def build_tagger(config: TaggingConfig, label_names: Sequence[str], seed: int):
    """`AutoModelForTokenClassification` with a fresh head (seeded) on the bottom `layers` layers."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    names = list(label_names)
    hf_config = AutoConfig.from_pretrained(config.model, num_labels=len(names),
                                           id2label=dict(enumerate(names)),
                                           label2id={n: i for i, n in enumerate(names)})
    if config.layers is not None:
        if config.layers > hf_config.num_hidden_layers:
            raise ValueError(f"{config.model} has {hf_config.num_hidden_layers} layers, not {config.layers}")
        hf_config.num_hidden_layers = config.layers
    torch.manual_seed(seed)
    return AutoModelForTokenClassification.from_pretrained(config.model, config=hf_config)


@dataclass
class TaggingRun:
    """A trained tagger and the figures of its training."""

    trainer: object = field(repr=False)
    steps: int
    epochs: float
    seconds: float
    history: list[dict]  # per epoch: train loss, validation loss and scores


def fine_tune(config: TaggingConfig, label_names: Sequence[str], metric: str, train: list[dict],
              validation: list[dict], seed: int, *, max_steps: int | None = None,
              progress: bool = True) -> TaggingRun:
    """Fine-tune `build_tagger(config)` end to end with `Trainer`, scoring validation every epoch."""
    from transformers import AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainingArguments

    if not train:
        raise ValueError("no training sentences")
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    model = build_tagger(config, label_names, seed)
    out = tempfile.mkdtemp(prefix="tagging-")  # Trainer needs a folder; nothing is saved there
    args = TrainingArguments(
        output_dir=out, learning_rate=config.lr, num_train_epochs=config.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=64,
        warmup_steps=config.warmup, weight_decay=config.weight_decay, lr_scheduler_type="linear",
        eval_strategy="epoch" if max_steps is None else "no", save_strategy="no",
        logging_strategy="epoch", report_to="none", seed=seed, data_seed=seed,
        train_sampling_strategy="group_by_length", disable_tqdm=not progress,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorForTokenClassification(tokenizer),
                      processing_class=tokenizer, compute_metrics=tag_metrics(label_names, metric))
    if not progress:  # no bar, and no log dicts printed either
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    history: dict[float, dict] = defaultdict(dict)
    for entry in trainer.state.log_history:
        if "epoch" in entry:
            epoch = round(entry["epoch"], 3)
            history[epoch] |= {k: round(v, 6) for k, v in entry.items()
                               if k in ("loss", "eval_loss") or (k.startswith("eval_") and
                                                                  k.removeprefix("eval_") in ("f1", "precision",
                                                                                              "recall", "accuracy"))}
    return TaggingRun(trainer, steps=output.global_step, epochs=round(trainer.state.epoch or 0.0, 3),
                      seconds=seconds, history=[{"epoch": e, **v} for e, v in sorted(history.items())])


@torch.no_grad()
def predict(run: TaggingRun, rows: list[dict], batch_size: int = 64) -> tuple[list[list[int]], list[list[int]]]:
    """(gold, predicted) word label ids of `rows`, in their order, with a trained tagger.

    (`Trainer.predict` would group the rows by length in a seeded random order, as it trains.)
    """
    model, collate = run.trainer.model, run.trainer.data_collator
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # little padding
    gold, pred = [None] * len(rows), [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([rows[i] for i in chunk])
        labels = batch.pop("labels").numpy()
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        for i, g, p in zip(chunk, word_labels(labels), word_predictions(logits, labels)):
            gold[i], pred[i] = g, p
    return gold, pred


def write_conll(path: Path, sentences: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                pred: Sequence[Sequence[str]]) -> Path:
    """`word gold predicted` per line, a blank line after each sentence (what conlleval reads)."""
    with open(path, "w", encoding="utf-8") as f:
        for words, g, p in zip(sentences, gold, pred, strict=True):
            for w, a, b in zip(words, g, p, strict=True):
                word = re.sub(r"\s", "_", w) or "_"  # one field: conlleval splits on spaces
                f.write(f"{word} {a} {b}\n")
            f.write("\n")
    return Path(path)


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """(words, gold, predicted) sentences of a file written by `write_conll`."""
    sentences: list[list[list[str]]] = [[[], [], []]]
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if sentences[-1][0]:
                sentences.append([[], [], []])
            continue
        parts = line.split(" ")
        if len(parts) != 3:
            raise ValueError(f"{path}: {line!r} is not 'word gold predicted'")
        for column, value in zip(sentences[-1], parts):
            column.append(value)
    if not sentences[-1][0]:
        sentences.pop()
    return tuple([s[i] for s in sentences] for i in range(3))


# ----------------------------------------------------------------------------- baselines


def most_frequent_tagger(sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]],
                         default: str) -> Callable[[Sequence[str]], list[str]]:
    """word -> its most frequent training tag (ties: the first seen); unseen words get `default`."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for words, labels in zip(sentences, tags, strict=True):
        for w, t in zip(words, labels, strict=True):
            counts[w][t] += 1
    table = {w: c.most_common(1)[0][0] for w, c in counts.items()}
    return lambda words: [table.get(w, default) for w in words]


SPELLING_RULES = (("ing", "VBG"), ("ed", "VBN"), ("ly", "RB"), ("s", "NNS"))


def spelling_rule(word: str) -> str:
    """A Penn tag for an unseen word from its spelling: capitalised NNP, digits CD, -ing -ed -ly -s, else NN."""
    if word[:1].isupper():
        return "NNP"
    if any(c.isdigit() for c in word):
        return "CD"
    for ending, tag in SPELLING_RULES:
        if word.endswith(ending):
            return tag
    return "NN"


def rules_tagger(sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]]
                 ) -> Callable[[Sequence[str]], list[str]]:
    """The most frequent training tag of a seen word, `spelling_rule` for an unseen one."""
    seen = most_frequent_tagger(sentences, tags, default="")
    return lambda words: [t or spelling_rule(w) for w, t in zip(words, seen(words))]


# ----------------------------------------------------------------------------- CRF


class CRF(nn.Module):
    """A linear-chain CRF over emission scores: start, transition and end scores, trained by NLL.

    `log_partition` is the forward algorithm, `decode` Viterbi; `mask` marks the real positions
    of each sequence (a prefix: padding only at the end; the first position must be real).
    """

    def __init__(self, n_tags: int) -> None:
        super().__init__()
        self.n_tags = n_tags
        self.start = nn.Parameter(torch.zeros(n_tags))
        self.end = nn.Parameter(torch.zeros(n_tags))
        self.transitions = nn.Parameter(torch.zeros(n_tags, n_tags))  # [from, to]
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if emissions.ndim != 3 or emissions.shape[-1] != self.n_tags:
            raise ValueError(f"emissions must be [batch, length, {self.n_tags}], got {tuple(emissions.shape)}")
        if mask is None:
            return torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        mask = mask.bool()
        if mask.shape != emissions.shape[:2]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, emissions {tuple(emissions.shape[:2])}")
        if emissions.shape[1] and not mask[:, 0].all():
            raise ValueError("every sequence needs a real first position (mask[:, 0] all true)")
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("mask must be a prefix of ones (padding at the end only)")
        return mask

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None
              ) -> torch.Tensor:
        """The unnormalised score of each tag sequence: [batch]."""
        mask = self._check(emissions, mask)
        tags = tags.masked_fill(~mask, 0)
        emit = emissions.gather(-1, tags.unsqueeze(-1)).squeeze(-1) * mask
        trans = self.transitions[tags[:, :-1], tags[:, 1:]] * mask[:, 1:]
        last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
        return self.start[tags[:, 0]] + emit.sum(1) + trans.sum(1) + self.end[last]

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log Z of each sequence, summed over every tag sequence by the forward algorithm: [batch]."""
        mask = self._check(emissions, mask)
        alpha = self.start + emissions[:, 0]  # [batch, tags]
        for i in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + self.transitions, dim=1) + emissions[:, i]
            alpha = torch.where(mask[:, i : i + 1], step, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None
            ) -> torch.Tensor:
        """Mean negative log-likelihood of the gold tag sequences."""
        return (self.log_partition(emissions, mask) - self.score(emissions, tags, mask)).mean()

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> list[list[int]]:
        """The highest-scoring tag sequence of each sequence (Viterbi), as lists of its real length."""
        mask = self._check(emissions, mask)
        best = self.start + emissions[:, 0]
        pointers = []
        for i in range(1, emissions.shape[1]):
            scores, previous = (best.unsqueeze(2) + self.transitions).max(dim=1)
            step = scores + emissions[:, i]
            real = mask[:, i : i + 1]
            best = torch.where(real, step, best)
            keep = torch.arange(self.n_tags, device=emissions.device).expand_as(previous)
            pointers.append(torch.where(real, previous, keep))  # padding: stay on the same tag
        last = (best + self.end).argmax(1)
        paths = [last]
        for pointer in reversed(pointers):
            last = pointer.gather(1, last.unsqueeze(1)).squeeze(1)
            paths.append(last)
        path = torch.stack(paths[::-1], dim=1)
        return [row[: int(n)].tolist() for row, n in zip(path, mask.sum(1))]


# ----------------------------------------------------------------------------- recipes

WNUT16_REFERENCES = {  # entity F1 on the WNUT-16 test set (3,856 tweets), 10 types, conlleval
    "WNUT-16 winner, BiLSTM (CambridgeLTL; Limsopatham & Collier, 2016)": 0.5241,
    "DeepNNNER, BLSTM-CNN + lexicons (Dugas & Nichols, 2016)": 0.4724,
}
POS_REFERENCES = {  # token accuracy on the Penn Treebank WSJ test sections, human-annotated tags
    "Stanford tagger, WSJ (Manning, 2011)": 0.9732,
    "Meta-BiLSTM, WSJ (Bohnet et al., 2018)": 0.9796,
}


@dataclass(frozen=True)
class TaggingRecipe:
    """A token-classification experiment: a search on validation (one seed), then seeds."""

    key: str
    task: str  # "twitter-ner" or "oanc-pos"
    grid: tuple[TaggingConfig, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    search_seed: int = 0


RECIPES = {
    r.key: r
    for r in [
        # representation (bottom 2, 4 or all 6 layers) and learning rate, 4 epochs, chosen on validation
        TaggingRecipe("twitter-ner", "twitter-ner", grid=(
            TaggingConfig(lr=5e-5, epochs=4), TaggingConfig(lr=1e-4, epochs=4),
            TaggingConfig(layers=4, lr=1e-4, epochs=4), TaggingConfig(layers=2, lr=1e-4, epochs=4))),
        TaggingRecipe("oanc-pos", "oanc-pos", grid=(
            TaggingConfig(lr=1e-4, epochs=3), TaggingConfig(layers=4, lr=1e-4, epochs=3),
            TaggingConfig(layers=2, lr=1e-4, epochs=3), TaggingConfig(layers=2, lr=2e-4, epochs=3))),
    ]
}
POS_SENTENCES = 2000  # load_oanc_pos(n_sentences=...): the chapter's split, and its baselines


def load_task(task: str) -> tuple[dict[str, list[list[str]]], dict[str, list[list[int]]], list[str], str]:
    """(words per split, label ids per split, label names, metric) of a recipe's task."""
    from companion.corpora import load_oanc_pos, load_twitter_ner

    if task == "twitter-ner":
        data, column, metric = load_twitter_ner(), "ner_tags", "entity"
    elif task == "oanc-pos":
        data, column, metric = load_oanc_pos(n_sentences=POS_SENTENCES), "pos_tags", "accuracy"
    else:
        raise ValueError(f"unknown task {task!r}: use twitter-ner or oanc-pos")
    names = data["train"].features[column].feature.names
    return ({s: data[s]["tokens"] for s in data}, {s: data[s][column] for s in data}, names, metric)


def baselines(words: dict, labels: dict, names: Sequence[str], metric: str) -> dict[str, dict[str, float]]:
    """Test scores of the most-frequent-tag baseline (and, for POS, of most-frequent-tag + spelling rules)."""
    gold = {s: [[names[t] for t in ids] for ids in labels[s]] for s in labels}
    index = {n: i for i, n in enumerate(names)}
    out = {}
    memorise = most_frequent_tagger(words["train"], gold["train"], "O" if metric == "entity" else "NN")
    taggers = {"most frequent tag per word": memorise}
    if metric == "accuracy":
        taggers["most frequent tag + spelling rules"] = rules_tagger(words["train"], gold["train"])
    for name, tagger in taggers.items():
        pred = [[index[t] for t in tagger(w)] for w in words["test"]]
        out[name] = score(labels["test"], pred, names, metric)
    return out


def _headline(metric: str) -> str:
    return "f1" if metric == "entity" else "accuracy"


def run_recipe(recipe: TaggingRecipe, out: Path, *, max_steps: int | None = None, subset: int | None = None,
               seeds: Sequence[int] | None = None, progress: bool = True) -> dict:
    """Search `recipe.grid` on validation (one seed), train the choice with every seed, write `out`."""
    from transformers import AutoTokenizer

    from companion.book import progress as bar

    if Path(out).resolve().is_relative_to(RESULTS.resolve()):
        raise ValueError(f"{out} is inside {RESULTS}, where the shipped results live: write elsewhere")
    seeds = tuple(seeds if seeds is not None else recipe.seeds)
    if not seeds:
        raise ValueError("no seeds to run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    words, labels, names, metric = load_task(recipe.task)
    if subset is not None:
        words = {s: w[:subset] for s, w in words.items()}
        labels = {s: y[:subset] for s, y in labels.items()}
    key = _headline(metric)
    encoded, tokenizers = {}, {}

    def data(config: TaggingConfig) -> dict[str, list[dict]]:
        if (config.model, config.max_length) not in encoded:
            tokenizer = tokenizers.setdefault(config.model, AutoTokenizer.from_pretrained(config.model))
            encoded[config.model, config.max_length] = {
                s: encode_words(tokenizer, words[s], labels[s], config.max_length) for s in words}
        return encoded[config.model, config.max_length]

    # 1. the search: every candidate with one seed, scored on validation after every epoch
    candidates, best = [], None
    for i, config in enumerate(bar(recipe.grid, desc=f"{recipe.key} search") if progress else recipe.grid):
        d = data(config)
        run = fine_tune(config, names, metric, d["train"], d["validation"], recipe.search_seed,
                        max_steps=max_steps, progress=progress)
        if max_steps is None:
            curve = [(h["epoch"], h[f"eval_{key}"]) for h in run.history if f"eval_{key}" in h]
        else:  # a quick check: no per-epoch evaluation, score the end
            curve = [(run.epochs, score(*predict(run, d["validation"]), names, metric)[key])]
        epoch, value = max(curve, key=lambda c: c[1])  # ties: the earlier epoch
        candidates.append({"config": asdict(config), "validation": dict(curve), "best_epoch": epoch,
                           f"best_validation_{key}": value, "train_seconds": round(run.seconds, 1)})
        if best is None or value > best[1]:
            best = (i, value, run)
        else:
            del run
    i, _, search_run = best
    chosen = recipe.grid[i]
    best_epoch = candidates[i]["best_epoch"]
    if max_steps is None and round(best_epoch) != chosen.epochs:
        chosen = TaggingConfig(**(asdict(chosen) | {"epochs": max(1, round(best_epoch))}))

    # 2. the chosen configuration with every seed; test scored once per run
    runs = []
    for seed in (bar(seeds, desc=f"{recipe.key} seeds") if progress else seeds):
        d = data(chosen)
        reuse = seed == recipe.search_seed and asdict(chosen) == asdict(recipe.grid[i])
        run = search_run if reuse else fine_tune(chosen, names, metric, d["train"], d["validation"], seed,
                                                 max_steps=max_steps, progress=progress)
        figures = {"seed": seed, "steps": run.steps, "epochs": run.epochs,
                   "train_seconds": round(run.seconds, 1), "reused_search_run": reuse, "history": run.history}
        for split in ("validation", "test"):
            gold, pred = predict(run, d[split])
            for name, value in score(gold, pred, names, metric).items():
                figures[f"{split}_{name}"] = value
        path = write_conll(out / f"test-predictions-seed-{seed}.txt", words["test"],
                           [[names[t] for t in g] for g in gold], [[names[t] for t in p] for p in pred])
        figures["test_predictions"] = path.name
        runs.append(figures)
        del run
    search_run = None
    metric_names = [k for k in runs[0] if k.startswith(("test_", "validation_")) and k != "test_predictions"]
    results = {
        "recipe": recipe.key, "task": recipe.task, "metric": metric, "headline": f"test_{key}",
        "full_run": max_steps is None and subset is None and seeds == recipe.seeds,
        "max_steps": max_steps, "subset": subset, "seeds": list(seeds),
        "split_sizes": {s: len(w) for s, w in words.items()},
        "labels": list(names),
        "search": {"seed": recipe.search_seed, "split": "validation (the test split is not read)",
                   "selection": f"highest validation {key} over candidates and epochs; ties: the first",
                   "candidates": candidates},
        "config": asdict(chosen),
        "hyperparameters_chosen_on": f"validation {key} of seed {recipe.search_seed} in the search above "
                                     "(layers and learning rate; epochs: the best epoch of that run)",
        "metrics": {k: seed_summary([r[k] for r in runs]) for k in metric_names}
                   | {"train_seconds": seed_summary([r["train_seconds"] for r in runs])},
        "steps": runs[0]["steps"], "epochs": runs[0]["epochs"], "runs": runs,
        "baselines": baselines(words, labels, names, metric),
        "references": WNUT16_REFERENCES if metric == "entity" else POS_REFERENCES,
        "references_note": (
            "WNUT-16's own test set (3,856 tweets); ours is 240 tweets of its training data"
            if metric == "entity" else
            "WSJ with human-annotated tags and ~40,000 training sentences; OANC's tags are automatic"),
        "weights": "not shipped (a fully fine-tuned MiniLM is ~90 MB): each seed's test predictions "
                   "are in test-predictions-seed-*.txt (CoNLL: word gold predicted)",
    }
    results |= {"wall_seconds": round(time.perf_counter() - start, 1), **environment()}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def shipped_results(key: str, folder: Path | None = None) -> dict:
    """The results.json of a tagging recipe (default: the shipped copy in companion/results/KEY), hashes checked."""
    return verified_results(Path(folder) if folder is not None else RESULTS / key, key)


def rescore(key: str, seed: int, folder: Path | None = None) -> dict[str, float]:
    """The test scores of one seed recomputed from its shipped predictions file."""
    folder = Path(folder) if folder is not None else RESULTS / key
    results = shipped_results(key, folder)
    _, gold, pred = read_conll(folder / f"test-predictions-seed-{seed}.txt")
    index = {n: i for i, n in enumerate(results["labels"])}
    return score([[index[t] for t in g] for g in gold], [[index[t] for t in p] for p in pred],
                 results["labels"], results["metric"])





# ----------------------------------------------------------------------------- character taggers

SENTENCE_ENDS = set("。！？；")


def split_sentences(text: str, tags: Sequence[int]) -> list[tuple[str, list[int]]]:
    """Cut a line into (text, tags) pieces after every 。！？； not followed by another one or a closing quote."""
    if len(text) != len(tags):
        raise ValueError(f"{len(text)} characters but {len(tags)} tags")
    pieces, start = [], 0
    for i, char in enumerate(text):
        if char in SENTENCE_ENDS and (i + 1 == len(text) or text[i + 1] not in SENTENCE_ENDS | set("”’）")):
            pieces.append((text[start : i + 1], list(tags[start : i + 1])))
            start = i + 1
    if start < len(text):
        pieces.append((text[start:], list(tags[start:])))
    return pieces


class CharTagger(nn.Module):
    """Character embeddings -> a BiLSTM -> one score per tag (emissions); softmax or a CRF on top."""

    def __init__(self, n_chars: int, n_tags: int, dim: int = 128, crf: bool = False, dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Embedding(n_chars, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * dim, n_tags)
        self.crf = CRF(n_tags) if crf else None

    def emissions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, length, tags] scores; id 0 is padding (at the end of each row)."""
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        lengths = (input_ids != 0).sum(1).cpu()
        packed = pack_padded_sequence(self.embed(input_ids), lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=input_ids.shape[1])
        return self.out(self.dropout(hidden))

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per character (softmax), or the CRF's negative log-likelihood per sentence."""
        emissions, mask = self.emissions(input_ids), input_ids != 0
        if self.crf is None:
            return nn.functional.cross_entropy(emissions[mask], labels[mask])
        return self.crf.nll(emissions, labels.clamp(min=0), mask)

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor) -> list[list[int]]:
        """The predicted tags of each row: per-character argmax (softmax) or Viterbi (CRF)."""
        emissions, mask = self.emissions(input_ids), input_ids != 0
        if self.crf is not None:
            return self.crf.decode(emissions, mask)
        return [row[: int(n)].tolist() for row, n in zip(emissions.argmax(-1), mask.sum(1))]


@dataclass(frozen=True)
class CharConfig:
    """A character tagger's training: size, optimisation, and when to stop."""

    crf: bool = False
    dim: int = 128
    lr: float = 2e-3
    batch_size: int = 32
    max_epochs: int = 30
    patience: int = 3  # stop after this many epochs without a better validation score
    train_lines: int | None = None  # the first N training lines (None: all)


def char_vocabulary(texts: Sequence[str]) -> dict[str, int]:
    """Character -> id over the training texts: 0 is padding, 1 unknown, then characters in order."""
    chars = sorted({c for text in texts for c in text})
    return {"<pad>": 0, "<unk>": 1} | {c: i + 2 for i, c in enumerate(chars)}


def _char_batches(pieces: Sequence[tuple[str, list[int]]], vocab: dict[str, int], batch_size: int,
                  generator: torch.Generator | None = None):
    """(indices, input_ids, labels) batches of similar length; shuffled when a generator is given."""
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i][0]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if generator is not None:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    for chunk in chunks:
        width = max(len(pieces[i][0]) for i in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX)
        for row, i in enumerate(chunk):
            text, tags = pieces[i]
            ids[row, : len(text)] = torch.tensor([vocab.get(c, 1) for c in text])
            labels[row, : len(text)] = torch.tensor(tags)
        yield chunk, ids, labels


def predict_chars(model: CharTagger, pieces: Sequence[tuple[str, list[int]]], vocab: dict[str, int],
                  batch_size: int = 128) -> list[list[int]]:
    """Predicted tag ids of every piece, in order."""
    model.eval()
    out: list = [None] * len(pieces)
    for chunk, ids, _ in _char_batches(pieces, vocab, batch_size):
        for i, tags in zip(chunk, model.decode(ids)):
            out[i] = tags
    return out


def train_char_tagger(config: CharConfig, data: dict[str, list], label_names: Sequence[str], seed: int,
                      *, max_steps: int | None = None, progress: bool = True,
                      metric: str = "entity") -> tuple[CharTagger, dict]:
    """Train until validation F1 (entities, or words for BMES) stops improving (`patience` epochs); keep
    the best epoch's weights."""
    from companion.book import progress as bar

    vocab = char_vocabulary([text for text, _ in data["train"]])
    torch.manual_seed(seed)
    model = CharTagger(len(vocab), len(label_names), config.dim, crf=config.crf)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    gold = [tags for _, tags in data["validation"]]
    best, best_state, history, steps, start = -1.0, None, [], 0, time.perf_counter()
    epochs = range(1, config.max_epochs + 1)
    for epoch in (bar(epochs, desc=f"{'CRF' if config.crf else 'softmax'} seed {seed}") if progress else epochs):
        model.train()
        total = n = 0.0
        for _, ids, labels in _char_batches(data["train"], vocab, config.batch_size, generator):
            loss = model.loss(ids, labels)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            total, n, steps = total + loss.item(), n + 1, steps + 1
            if max_steps is not None and steps >= max_steps:
                break
        f1 = score(gold, predict_chars(model, data["validation"], vocab), label_names, metric)["f1"]
        history.append({"epoch": epoch, "train_loss": round(total / max(n, 1), 6), "validation_f1": f1})
        if f1 > best:
            best, best_epoch = f1, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if max_steps is not None and steps >= max_steps or epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.vocab = vocab
    return model, {"steps": steps, "epochs": len(history), "best_epoch": best_epoch,
                   "train_seconds": round(time.perf_counter() - start, 1), "history": history,
                   "parameters": sum(p.numel() for p in model.parameters())}


PEOPLES_DAILY_NER = CharConfig(dim=64, lr=2e-3, batch_size=64, max_epochs=15, patience=2, train_lines=4000)
PEOPLES_DAILY_CWS = PEOPLES_DAILY_NER  # the same model and budget for word segmentation
CHAR_TASKS = {  # task -> (recipe key, metric, description)
    "ner": ("peoples-daily-ner", "entity", "People's Daily NER (PER/LOC/ORG over characters), split by article "
            "(companion.corpora.load_peoples_daily_ner)"),
    "cws": ("peoples-daily-cws", "words", "People's Daily word segmentation (BMES tags over characters, word F1), "
            "split by article (companion.corpora.load_peoples_daily_cws)"),
}


def peoples_daily_pieces(train_lines: int | None = None, subset: int | None = None,
                         task: str = "ner") -> dict[str, list]:
    """People's Daily NER or word segmentation ("cws", BMES tags), split by article, cut into sentences:
    {split: [(text, tag ids), ...]}."""
    from companion.corpora import load_peoples_daily_cws, load_peoples_daily_ner

    if task not in CHAR_TASKS:
        raise ValueError(f"task must be one of {', '.join(CHAR_TASKS)}, got {task!r}")
    data = load_peoples_daily_ner(by="article") if task == "ner" else load_peoples_daily_cws(by="article")
    column = "ner_tags" if task == "ner" else "tags"
    out = {}
    for split in ("train", "validation", "test"):
        rows = data[split]
        if split == "train" and train_lines is not None:
            rows = rows.select(range(min(train_lines, len(rows))))
        pieces = [p for text, tags in zip(rows["text"], rows[column]) for p in split_sentences(text, tags)]
        out[split] = pieces[:subset] if subset is not None else pieces
    return out


def save_char_tagger(model: CharTagger, folder: Path) -> list[Path]:
    """The weights (safetensors) and the character vocabulary (JSON) of a trained character tagger."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "vocab.json").write_text(json.dumps(model.vocab, ensure_ascii=False))
    return [folder / "model.safetensors", folder / "vocab.json"]


def load_char_tagger(folder: Path, n_tags: int, config: CharConfig) -> CharTagger:
    """A character tagger saved by `save_char_tagger`, in eval mode."""
    from safetensors.torch import load_file

    vocab = json.loads((Path(folder) / "vocab.json").read_text())
    model = CharTagger(len(vocab), n_tags, config.dim, crf=config.crf)
    model.load_state_dict(load_file(Path(folder) / "model.safetensors"))
    model.vocab = vocab
    return model.eval()


def run_char_recipe(out: Path, *, config: CharConfig = PEOPLES_DAILY_NER, max_steps: int | None = None,
                    subset: int | None = None, seeds: Sequence[int] = (0, 1, 2), progress: bool = True,
                    task: str = "ner") -> dict:
    """peoples-daily-ner / -cws: a character BiLSTM with softmax and with a CRF on top, over seeds; writes `out`."""
    from companion.corpora import BMES, PEOPLES_DAILY_NER_TAGS
    from companion.recipes import run_folder
    from companion.resources import sha256

    if task not in CHAR_TASKS:
        raise ValueError(f"task must be one of {', '.join(CHAR_TASKS)}, got {task!r}")
    key, metric, description = CHAR_TASKS[task]
    names = PEOPLES_DAILY_NER_TAGS if task == "ner" else BMES
    out = run_folder(out)
    start = time.perf_counter()
    data = peoples_daily_pieces(config.train_lines, subset, task)
    variants, artifacts = {}, {}
    for crf in (False, True):
        variant = "crf" if crf else "softmax"
        c = CharConfig(**(asdict(config) | {"crf": crf}))
        runs = []
        for seed in seeds:
            model, figures = train_char_tagger(c, data, names, seed, max_steps=max_steps, progress=progress,
                                               metric=metric)
            gold = [tags for _, tags in data["test"]]
            pred = predict_chars(model, data["test"], model.vocab)
            figures |= {"seed": seed, **{f"test_{k}": v for k, v in score(gold, pred, names, metric).items()},
                        "validation_f1": max(h["validation_f1"] for h in figures["history"])}
            folder = out / f"{variant}-seed-{seed}"
            paths = save_char_tagger(model, folder)
            paths.append(write_conll(folder / "test-predictions.txt", [list(t) for t, _ in data["test"]],
                                     [[names[t] for t in g] for g in gold], [[names[t] for t in p] for p in pred]))
            artifacts |= {str(p.relative_to(out)): sha256(p) for p in paths}
            runs.append(figures)
        variants[variant] = {
            "config": asdict(c), "runs": runs,
            "metrics": {k: seed_summary([r[k] for r in runs]) for k in
                        ("test_f1", "test_precision", "test_recall", "validation_f1", "best_epoch",
                         "epochs", "train_seconds")}}
    paired = [c["test_f1"] - s["test_f1"] for s, c in zip(variants["softmax"]["runs"], variants["crf"]["runs"])]
    results = {
        "recipe": key, "task": description, "metric": metric, "headline": "test_f1",
        "full_run": max_steps is None and subset is None and tuple(seeds) == (0, 1, 2),
        "max_steps": max_steps, "subset": subset, "seeds": list(seeds), "labels": list(names),
        "split_sizes": {s: len(p) for s, p in data.items()},
        "split_characters": {s: sum(len(t) for t, _ in p) for s, p in data.items()},
        "hyperparameters_chosen_on": "not searched (the chapter's BiLSTM size, 64 per direction; lr 2e-3, "
                                     "batch 64); epochs: early stopping on validation F1 (patience "
                                     f"{config.patience}), the best epoch's weights kept",
        "variants": variants, "crf_minus_softmax_test_f1": seed_summary(paired),
        "weights": "each run's weights (model.safetensors), vocabulary (vocab.json) and test predictions "
                   "(CoNLL: character gold predicted) in {softmax,crf}-seed-*/",
        "artifacts": artifacts,
    }
    results |= {"wall_seconds": round(time.perf_counter() - start, 1), **environment()}
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return results


RECIPE_KEYS = (*sorted(RECIPES), "peoples-daily-ner", "peoples-daily-cws")


def run_named(key: str, out: Path, *, max_steps: int | None = None, subset: int | None = None,
              seeds: Sequence[int] | None = None, progress: bool = True) -> dict:
    """Run the recipe `key` (one of `RECIPE_KEYS`) into `out`; returns its results.json."""
    if key in ("peoples-daily-ner", "peoples-daily-cws"):
        return run_char_recipe(out, max_steps=max_steps, subset=subset, seeds=tuple(seeds or (0, 1, 2)),
                               task="ner" if key == "peoples-daily-ner" else "cws",
                               progress=progress)
    if key not in RECIPES:
        raise ValueError(f"unknown tagging recipe {key!r}: use one of {', '.join(RECIPE_KEYS)}")
    return run_recipe(RECIPES[key], out, max_steps=max_steps, subset=subset, seeds=seeds, progress=progress)


def headline(results: dict) -> str:
    """One line of a recipe's results: the test score, mean ± std and per seed."""
    if "variants" in results:
        parts = []
        for variant, v in results["variants"].items():
            m = v["metrics"]["test_f1"]
            parts.append(f"{variant} test F1 {m['mean']:.4f} ± {m['std']:.4f} {m['values']}")
        return "; ".join(parts)
    m = results["metrics"][results["headline"]]
    return (f"{results['headline']} {m['mean']:.4f} ± {m['std']:.4f} over seeds {results['seeds']}: "
            f"{m['values']}; chosen {json.dumps(results['config'])}")


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.tagging KEY [--max-steps N] [--subset N] [--seeds ...] [--out DIR]."""
    import companion

    parser = argparse.ArgumentParser(prog="python -m companion.tagging", description=__doc__.split("\n")[0])
    parser.add_argument("key", choices=RECIPE_KEYS)
    parser.add_argument("--max-steps", type=int, help="stop each run after N steps (a quick check)")
    parser.add_argument("--subset", type=int, help="the first N sentences of each split")
    parser.add_argument("--seeds", type=int, nargs="+", help="these seeds instead of the recipe's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/KEY)")
    args = parser.parse_args(argv)
    companion.setup(threads=args.threads)
    out = args.out or RUNS / args.key
    print(f"writing {out.resolve()}")
    r = run_named(args.key, out, max_steps=args.max_steps, subset=args.subset, seeds=args.seeds)
    print(headline(r))
    print(f"wrote {(out / 'results.json').resolve()} in {r['wall_seconds']:.0f} s ({r['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
