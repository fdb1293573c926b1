"""Knowledge distillation (Hinton et al., 2015): a small student learns from a teacher's logits.

The teacher's logits z_t and the student's z_s are softened with a temperature T,
p = softmax(z / T); the soft loss is T^2 * KL(p_t || p_s) (the T^2 keeps its gradients the
same size as T changes), the hard loss the cross-entropy with the labels, and

    loss = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(z_s, labels).

alpha=0 is plain fine-tuning on labels ("hard"), alpha=1 learns from the teacher only ("soft").
The recipe distils the book's fine-tuned MiniLM (6 layers, `prune.merged_classifier`) into a
2-layer student: the pre-trained MiniLM's first two layers and a new head, embeddings frozen.

>>> loss = distillation_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

KEY = "distill"
VARIANTS = {"hard": 0.0, "soft": 1.0, "both": 0.5}  # alpha of each variant


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor | None, *, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels),
    averaged over the batch."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha weighs the soft loss, in [0, 1]; got {alpha!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    loss = student_logits.new_zeros(())
    if alpha > 0:
        log_p_student = nn.functional.log_softmax(student_logits / temperature, dim=-1)
        log_p_teacher = nn.functional.log_softmax(teacher_logits.detach() / temperature, dim=-1)
        kl = nn.functional.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        loss = loss + alpha * temperature ** 2 * kl
    if alpha < 1:
        if labels is None:
            raise ValueError("labels are needed when alpha < 1 (the hard loss has weight 1 - alpha)")
        loss = loss + (1 - alpha) * nn.functional.cross_entropy(student_logits, labels)
    return loss


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): T > 1 flattens the distribution, T -> 0 makes it one-hot."""
    return (logits / temperature).softmax(-1)


def build_student(n_layers: int = 2, *, seed: int = 0, model: str | None = None) -> nn.Module:
    """A MeanPoolClassifier on the first `n_layers` layers of pre-trained MiniLM, a new head drawn
    with `seed`, the embeddings frozen."""
    from transformers import AutoModel

    from companion.finetune import MINILM, MeanPoolClassifier

    encoder = AutoModel.from_pretrained(model or MINILM, add_pooling_layer=False)
    if not 1 <= n_layers <= encoder.config.num_hidden_layers:
        raise ValueError(f"n_layers must be in 1..{encoder.config.num_hidden_layers}, got {n_layers}")
    encoder.encoder.layer = encoder.encoder.layer[:n_layers]
    encoder.config.num_hidden_layers = n_layers
    encoder.embeddings.requires_grad_(False)
    torch.manual_seed(seed)
    return MeanPoolClassifier(encoder)


@torch.no_grad()
def logits_of(model: nn.Module, data: Sequence[dict], batch_size: int = 64) -> torch.Tensor:
    """The logits (sentences x labels, in order) of a classifier in eval mode."""
    from companion.finetune import collate

    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    out = None
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        batch = collate([data[j] for j in rows])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if out is None:
            out = torch.empty(len(data), logits.shape[1])
        out[rows] = logits.float()
    model.train(was_training)
    return out


@dataclass(frozen=True)
class DistillConfig:
    """Everything that decides one student's training except its seed, loss and temperature."""

    n_layers: int = 2
    epochs: int = 5
    lr: float = 2e-4  # student's layers (polarity-full's rate; not searched)
    head_lr: float = 1e-3
    batch_size: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.01
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # searched on validation (first seed)


def train_student(student: nn.Module, train: Sequence[dict], teacher_logits: torch.Tensor,
                  validation: Sequence[dict], *, temperature: float, alpha: float,
                  config: DistillConfig = DistillConfig(), seed: int = 0, desc: str = "student") -> dict:
    """Train `student` with `distillation_loss` (AdamW, warmup + linear decay), validate after each
    epoch and keep the best epoch's weights. Returns steps, seconds and the history."""
    from companion.book import progress
    from companion.finetune import batch_order, collate, evaluate

    if len(teacher_logits) != len(train):
        raise ValueError(f"{len(teacher_logits)} teacher logits for {len(train)} sentences")
    head = [p for n, p in student.named_parameters() if n.startswith("head.")]
    body = [p for n, p in student.named_parameters() if p.requires_grad and not n.startswith("head.")]
    optimizer = torch.optim.AdamW([{"params": body, "lr": config.lr},
                                   {"params": head, "lr": config.head_lr}],
                                  weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train) / config.batch_size)
    warmup = int(config.warmup * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(e["input_ids"]) for e in train]
    history, best, best_state, step = [], None, None, 0
    start = time.perf_counter()
    bar = progress(total=steps, desc=desc)
    for epoch in range(1, config.epochs + 1):
        student.train()
        losses = []
        for indices in batch_order(lengths, config.batch_size, generator):
            batch = collate([train[j] for j in indices])
            logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = distillation_loss(logits, teacher_logits[indices], batch["labels"],
                                     temperature=temperature, alpha=alpha)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            bar.update()
        val = evaluate(student, validation)
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4),
                        "val_accuracy": val.accuracy, "val_loss": round(val.loss, 4)})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_acc=f"{val.accuracy:.3f}")
        if best is None or (val.accuracy, -val.loss) > best:
            best = (val.accuracy, -val.loss)
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            best_epoch = epoch
    bar.close()
    student.load_state_dict(best_state)
    student.eval()
    return {"steps": step, "best_epoch": best_epoch, "seconds": round(time.perf_counter() - start, 1),
            "history": history}


def save_student(student: nn.Module, path: Path) -> None:
    """The trained weights of a student (its layers and head; the frozen embeddings are MiniLM's)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()
               if "embeddings" not in k}, str(path))


def load_student(path: Path, n_layers: int = 2) -> nn.Module:
    """A student saved by `save_student`, on MiniLM's embeddings, in eval mode."""
    from safetensors.torch import load_file

    student = build_student(n_layers)
    missing, unexpected = student.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or any("embeddings" not in k for k in missing):
        raise ValueError(f"{path} does not hold a {n_layers}-layer student: {unexpected or missing}")
    return student.eval()


def run_recipe(out: Path, *, seeds: Sequence[int] = (0, 1, 2), subset: int | None = None,
               config: DistillConfig = DistillConfig()) -> dict:
    """Distil the fine-tuned MiniLM into 2-layer students: hard labels, soft targets, both; the
    temperature of soft and both chosen on validation with the first seed; test scored once per
    variant and seed. Writes results.json and, of the variant best on validation, the first seed's
    student into `out`."""
    from companion.finetune import evaluate
    from companion.provenance import check_run_arguments, environment, seed_summary
    from companion.prune import merged_classifier, parameter_count, polarity_data
    from companion.recipes import run_folder
    from companion.resources import sha256

    seeds = check_run_arguments(seeds, None, subset)
    out = run_folder(out)
    wall = time.perf_counter()
    data = polarity_data(subset)
    teacher = merged_classifier(0)
    teacher_train = logits_of(teacher, data["train"])
    teacher_test = evaluate(teacher, data["test"])
    teacher_val = evaluate(teacher, data["validation"])

    def one(variant: str, temperature: float, seed: int) -> tuple[nn.Module, dict]:
        student = build_student(config.n_layers, seed=seed)
        run = train_student(student, data["train"], teacher_train, data["validation"],
                            temperature=temperature, alpha=VARIANTS[variant], config=config, seed=seed,
                            desc=f"{variant} T={temperature:g} seed {seed}")
        run["validation_accuracy"] = evaluate(student, data["validation"]).accuracy
        return student, run

    first, variants, artifacts, firsts = seeds[0], {}, {}, {}
    for variant in VARIANTS:
        search = {}
        temperatures = (1.0,) if variant == "hard" else config.temperatures  # T does not enter CE
        for t in temperatures:
            search[t] = one(variant, t, first)
        chosen = max(temperatures, key=lambda t: (search[t][1]["validation_accuracy"], -t))
        runs = []
        for seed in seeds:
            student, run = search[chosen] if seed == first else one(variant, chosen, seed)
            test = evaluate(student, data["test"])
            run |= {"seed": seed, "test_accuracy": test.accuracy, "test_loss": round(test.loss, 6),
                    "test_agreement_with_teacher": float((test.predictions == teacher_test.predictions).mean())}
            runs.append(run)
            if seed == first:
                firsts[variant] = student
        variants[variant] = {
            "alpha": VARIANTS[variant], "temperature": chosen,
            "temperature_search": {str(t): search[t][1]["validation_accuracy"] for t in temperatures},
            "test_accuracy": seed_summary([r["test_accuracy"] for r in runs]),
            "validation_accuracy": seed_summary([r["validation_accuracy"] for r in runs]),
            "test_agreement_with_teacher": seed_summary([r["test_agreement_with_teacher"] for r in runs]),
            "runs": runs}
        print(f"{variant}: T={chosen:g}, test accuracy "
              f"{variants[variant]['test_accuracy']['mean']:.3f} ± {variants[variant]['test_accuracy']['std']:.3f}",
              flush=True)
    # One student ships (14 MB each): the first seed's of the variant best on validation.
    best = max(variants, key=lambda v: variants[v]["validation_accuracy"]["mean"])
    name = f"student-{best}-seed-{first}.safetensors"
    save_student(firsts[best], out / name)
    artifacts[name] = sha256(out / name)
    student = build_student(config.n_layers)
    results = {
        "key": KEY, "task": "Pang & Lee sentence polarity (companion.corpora.load_polarity)",
        "full_run": subset is None, "subset": subset, "seeds": seeds, "config": asdict(config),
        "teacher": {"model": "polarity-lora seed 0, merged (companion.prune.merged_classifier)",
                    "parameters": parameter_count(teacher), "test_accuracy": teacher_test.accuracy,
                    "validation_accuracy": teacher_val.accuracy},
        "student": {"model": f"first {config.n_layers} layers of all-MiniLM-L6-v2 + a new head, "
                             "embeddings frozen", "parameters": parameter_count(student)},
        "protocol": "temperature of 'soft' and 'both' chosen on validation accuracy with the first seed; "
                    "each student keeps its best epoch on validation; test scored once per variant and seed",
        "split_sizes": {s: len(v) for s, v in data.items()},
        "variants": variants, "wall_seconds": round(time.perf_counter() - wall, 1),
        "artifacts": artifacts, **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def headline(results: dict) -> str:
    """One line per variant: its temperature and test accuracy (mean ± std over seeds)."""
    lines = [f"teacher (6 layers): test accuracy {results['teacher']['test_accuracy']:.3f}"]
    for name, v in results["variants"].items():
        acc = v["test_accuracy"]
        lines.append(f"student {name} (alpha {v['alpha']}, T {v['temperature']:g}): test accuracy "
                     f"{acc['mean']:.3f} ± {acc['std']:.3f} ({len(results['seeds'])} seeds)")
    return "\n".join(lines)
