"""Fine-tuning a pre-trained model for sentence classification: the polarity recipes' code.

A `MeanPoolClassifier` puts a linear head on the mean of an encoder's token vectors (how
sentence-transformers trained all-MiniLM-L6-v2); `build_classifier` makes one fully trainable,
with LoRA on every linear layer (`peft`), or a decoder with a classification head
(`AutoModelForSequenceClassification`, the last token's vector) and LoRA. `train_classifier`
runs AdamW with warmup and linear decay, validates after every epoch and keeps the weights of the
epoch with the best validation accuracy; `evaluate` returns accuracy, loss and the probability of
every label for every sentence.

>>> config = FinetuneConfig(method="lora", lr=1e-3, epochs=3)
>>> model, tokenizer = build_classifier(config, seed=0)
>>> data = {s: encode(tokenizer, polarity[s]["text"], polarity[s]["label"], 64) for s in polarity}
>>> result = train_classifier(model, data["train"], data["validation"], config, seed=0)
>>> evaluate(model, data["test"]).accuracy
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
METHODS = ("full", "lora", "decoder-lora")
HEAD_FILE = "head.safetensors"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides one fine-tuning run except its seed."""

    method: str = "full"  # "full", "lora" (encoder + mean pooling) or "decoder-lora"
    model: str = MINILM
    lr: float = 5e-5  # encoder weights (full) or LoRA matrices
    head_lr: float = 1e-3  # the new classification head
    epochs: int = 3
    batch_size: int = 32
    warmup: float = 0.1  # fraction of the steps with a linear warmup, then linear decay to 0
    weight_decay: float = 0.01  # AdamW's, on matrices only (not on biases and LayerNorms)
    max_length: int = 64  # tokens per sentence at most
    layer_decay: float = 1.0  # full: layer l of L trains at lr * layer_decay ** (L - l)
    probe_init: bool = False  # LP-FT: start the head from a logistic regression on frozen vectors
    select: str = "best"  # "best": keep the epoch with the best validation accuracy; "last"
    group_by_length: bool = True  # batches of similar length (less padding), in random order
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    dropout: float = 0.1  # before the head of a MeanPoolClassifier
    num_labels: int = 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', got {self.select!r}")
        for name in ("lr", "head_lr", "epochs", "batch_size", "max_length", "lora_r", "num_labels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup!r}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        if self.layer_decay != 1 and self.method != "full":
            raise ValueError("layer_decay applies to full fine-tuning only")
        if self.probe_init and self.method == "decoder-lora":
            raise ValueError("probe_init needs a MeanPoolClassifier (method 'full' or 'lora')")


class MeanPoolClassifier(nn.Module):
    """An encoder, the mean of its token vectors over the attention mask, dropout, a linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean of the last layer's vectors over the real (unmasked) tokens."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None):
        """A `SequenceClassifierOutput` with logits (and the cross-entropy loss given labels)."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.head(self.dropout(self.pool(input_ids, attention_mask)))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# ----------------------------------------------------------------------------- data

def encode(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int) -> list[dict]:
    """Every sentence as a dict of tensors: input_ids (at most max_length), attention_mask, labels."""
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("no sentences to encode")
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": torch.tensor(row), "attention_mask": torch.ones(len(row), dtype=torch.long),
             "labels": torch.tensor(int(label))} for row, label in zip(ids, labels)]


def collate(examples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a batch on the right: input_ids with pad_id, attention_mask with 0."""
    from torch.nn.utils.rnn import pad_sequence

    return {"input_ids": pad_sequence([e["input_ids"] for e in examples], batch_first=True,
                                      padding_value=pad_id),
            "attention_mask": pad_sequence([e["attention_mask"] for e in examples], batch_first=True),
            "labels": torch.stack([e["labels"] for e in examples])}


def pad_id(model: nn.Module) -> int:
    """The id a model's batches are padded with (its config's pad_token_id, else 0)."""
    config = getattr(model, "config", None) or model.encoder.config
    return config.pad_token_id if config.pad_token_id is not None else 0


# ----------------------------------------------------------------------------- models

def lora_config(config: FinetuneConfig):
    """peft's LoraConfig of a recipe: rank r on every linear layer of the encoder or decoder."""
    from peft import LoraConfig, TaskType

    task = TaskType.SEQ_CLS if config.method == "decoder-lora" else TaskType.FEATURE_EXTRACTION
    return LoraConfig(task_type=task, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules="all-linear")


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft (0.21) reads `model.is_gradient_checkpointing`, which transformers 5 deprecates: its
    warning is about peft's code, not ours, so it is silenced here and nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def build_classifier(config: FinetuneConfig, seed: int = 0):
    """(model, tokenizer) of a recipe: new weights (head, LoRA) drawn with `seed`."""
    from peft import get_peft_model
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model)
    torch.manual_seed(seed)
    if config.method == "decoder-lora":
        base = AutoModelForSequenceClassification.from_pretrained(
            config.model, num_labels=config.num_labels, pad_token_id=tokenizer.pad_token_id)
        with _quiet_peft():
            return get_peft_model(base, lora_config(config)), tokenizer
    # mean pooling reads the last layer only: BERT's [CLS] pooler is left out
    encoder = AutoModel.from_pretrained(config.model, add_pooling_layer=False)
    if config.method == "lora":
        with _quiet_peft():
            encoder = get_peft_model(encoder, lora_config(config))
    return MeanPoolClassifier(encoder, config.num_labels, config.dropout), tokenizer


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _is_head(name: str) -> bool:
    """Whether a parameter belongs to the new classification head."""
    return name.startswith("head.") or ".score." in name or name.startswith("score.")


def _layer_index(name: str, n_layers: int) -> int:
    """0 for the embeddings, 1..L for encoder layer 0..L-1, L for anything after them."""
    if "embeddings" in name:
        return 0
    found = re.search(r"\.layers?\.(\d+)\.", name)
    return int(found.group(1)) + 1 if found else n_layers


def param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict]:
    """AdamW groups: the head at head_lr, the rest at lr (times layer_decay ** depth from the top);
    weight decay on matrices only."""
    n_layers = getattr(getattr(model, "encoder", model), "config").num_hidden_layers
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if _is_head(name):
            lr = config.head_lr
        else:
            lr = config.lr * config.layer_decay ** (n_layers - _layer_index(name, n_layers))
        decay = config.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


# ----------------------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    """Accuracy, mean cross-entropy and per-sentence label probabilities on one split."""

    accuracy: float
    loss: float
    probabilities: np.ndarray  # (sentences, labels)
    labels: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        """The most probable label of every sentence."""
        return self.probabilities.argmax(1)


def classifier_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a batch, for a MeanPoolClassifier or a transformers/peft classifier."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def classifier_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a classifier on a batch (logits in float32)."""
    return nn.functional.cross_entropy(classifier_logits(model, batch).float(), batch["labels"])


@torch.no_grad()
def evaluate(model: nn.Module, data: Sequence[dict], batch_size: int = 64) -> Evaluation:
    """Accuracy, loss and probabilities of `model` (in eval mode) on encoded sentences, in order."""
    if len(data) == 0:
        raise ValueError("no sentences to evaluate")
    was_training = model.training
    model.eval()
    device, pad = next(model.parameters()).device, pad_id(model)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))  # less padding
    logits_t = torch.empty(len(data), 0)
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        batch = {k: v.to(device) for k, v in collate([data[j] for j in rows], pad).items()}
        out = classifier_logits(model, batch).float().cpu()
        if logits_t.shape[1] == 0:
            logits_t = torch.empty(len(data), out.shape[1])
        logits_t[rows] = out
    model.train(was_training)
    labels = torch.stack([e["labels"] for e in data])
    probabilities = logits_t.softmax(-1).numpy()
    return Evaluation(accuracy=float((logits_t.argmax(-1) == labels).float().mean()),
                      loss=float(nn.functional.cross_entropy(logits_t, labels)),
                      probabilities=probabilities, labels=labels.numpy())


@torch.no_grad()
def mean_pooled(model: MeanPoolClassifier, data: Sequence[dict], batch_size: int = 64) -> np.ndarray:
    """The frozen (eval-mode) mean-pooled sentence vectors of a MeanPoolClassifier's encoder."""
    was_training = model.training
    model.eval()
    device, out = next(model.parameters()).device, []
    for i in range(0, len(data), batch_size):
        batch = collate(list(data[i:i + batch_size]), pad_id(model))
        out.append(model.pool(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def probe_init(model: MeanPoolClassifier, data: Sequence[dict], C: float = 1.0) -> float:
    """LP-FT's first step: fit a logistic regression on the frozen vectors and copy it into the
    head; returns its training accuracy."""
    from sklearn.linear_model import LogisticRegression

    if not isinstance(model, MeanPoolClassifier):
        raise TypeError("probe_init needs a MeanPoolClassifier")
    X, y = mean_pooled(model, data), np.array([int(e["labels"]) for e in data])
    probe = LogisticRegression(C=C, max_iter=3000).fit(X, y)
    coef, bias = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:  # two labels: one direction; logits -w/2, +w/2 give the same softmax
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(coef, dtype=model.head.weight.dtype))
        model.head.bias.copy_(torch.as_tensor(bias, dtype=model.head.bias.dtype))
    return float(probe.score(X, y))


# ----------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    """What a run did: steps, tokens, time, and validation after every epoch."""

    steps: int
    epochs: int
    best_epoch: int  # 1-based: the epoch whose weights the model holds at the end
    tokens: int  # real (unpadded) training tokens seen
    seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_accuracy, val_loss
    probe_accuracy: float | None = None  # LP-FT: the probe's training accuracy


def batch_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                group_by_length: bool = True, mega: int = 8) -> list[list[int]]:
    """One epoch's batches of indices: shuffled; with group_by_length, each run of `mega` batches
    is sorted by length before it is cut (like Trainer's group_by_length), then the batches are
    shuffled."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    for m in range(0, len(order), mega * batch_size):
        chunk = sorted(order[m:m + mega * batch_size], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _linear_schedule(steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup over `warmup` steps to 1, then linear decay to 0 at `steps`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))
    return factor


def train_classifier(model: nn.Module, train: Sequence[dict], validation: Sequence[dict],
                     config: FinetuneConfig, seed: int = 0, *, max_steps: int | None = None,
                     device: torch.device | str | None = None, desc: str | None = None,
                     after_backward: Callable[[nn.Module, dict], object] | None = None) -> TrainResult:
    """Fine-tune with AdamW, warmup + linear decay; validate after each epoch and keep the best
    (config.select="best") or the last weights. `max_steps` cuts a run short (tests);
    `after_backward(model, batch)` runs after each backward pass, before the optimizer step (it may
    add to the gradients: adversarial training)."""
    from companion.book import progress

    if len(train) == 0 or len(validation) == 0:
        raise ValueError("train and validation data must not be empty")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    probe_acc = probe_init(model, train) if config.probe_init else None
    per_epoch = math.ceil(len(train) / config.batch_size)
    steps = config.epochs * per_epoch
    if max_steps is not None:
        steps = min(steps, max_steps)
    optimizer = torch.optim.AdamW(param_groups(model, config))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _linear_schedule(steps, int(config.warmup * steps)))
    generator = torch.Generator().manual_seed(seed)
    pad, history, tokens, step = pad_id(model), [], 0, 0
    lengths = [len(e["input_ids"]) for e in train]
    best: tuple[float, float] | None = None
    best_state, best_epoch = None, 0
    start = time.perf_counter()
    bar = progress(total=steps, desc=desc or f"{config.method} seed {seed}")
    epoch = 0
    while step < steps:
        epoch += 1
        model.train()
        losses = []
        for indices in batch_order(lengths, config.batch_size, generator, config.group_by_length):
            if step == steps:
                break
            batch = collate([train[j] for j in indices], pad)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = classifier_loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower lr ({config.lr})")
            loss.backward()
            if after_backward is not None:
                after_backward(model, batch)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
        val = evaluate(model, validation)
        history.append({"epoch": epoch, "step": step, "train_loss": round(float(np.mean(losses)), 4),
                        "val_accuracy": val.accuracy, "val_loss": round(val.loss, 4)})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_acc=f"{val.accuracy:.3f}")
        key = (val.accuracy, -val.loss)  # ties in accuracy: the lower validation loss
        if config.select == "best" and (best is None or key > best):
            best, best_epoch = key, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bar.close()
    if config.select == "best" and best_epoch != epoch:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    model.eval()
    return TrainResult(steps=step, epochs=epoch, best_epoch=best_epoch, tokens=tokens,
                       seconds=time.perf_counter() - start, history=history, probe_accuracy=probe_acc)


# ----------------------------------------------------------------------------- artifacts

def save_adapter(model: nn.Module, folder: str | Path) -> list[Path]:
    """Save a LoRA classifier's trainable weights: peft's adapter folder, plus the head of a
    MeanPoolClassifier as safetensors. Returns the files written."""
    from peft import PeftModel
    from safetensors.torch import save_file

    folder = Path(folder)
    peft_model = model.encoder if isinstance(model, MeanPoolClassifier) else model
    if not isinstance(peft_model, PeftModel):
        raise TypeError("save_adapter saves LoRA models (method 'lora' or 'decoder-lora'); a fully "
                        "fine-tuned model is saved whole with save_pretrained")
    folder.mkdir(parents=True, exist_ok=True)
    # the embeddings are not adapted: nothing to compare with the base's vocabulary (offline-safe)
    peft_model.save_pretrained(folder, save_embedding_layers=False)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model card template
    if isinstance(model, MeanPoolClassifier):
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                  folder / HEAD_FILE)
    return sorted(p for p in folder.iterdir() if p.is_file())


def load_adapter(folder: str | Path, config: FinetuneConfig) -> nn.Module:
    """A LoRA classifier saved by `save_adapter`, on its base model, in eval mode."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder} holds no adapter_config.json: not a saved adapter")
    if config.method == "decoder-lora":
        pad = AutoTokenizer.from_pretrained(config.model).pad_token_id
        base = AutoModelForSequenceClassification.from_pretrained(
            config.model, num_labels=config.num_labels, pad_token_id=pad)
        with _quiet_peft():
            return PeftModel.from_pretrained(base, folder).eval()
    if config.method != "lora":
        raise ValueError(f"method {config.method!r} has no adapter to load")
    with _quiet_peft():
        encoder = PeftModel.from_pretrained(
            AutoModel.from_pretrained(config.model, add_pooling_layer=False), folder)
    model = MeanPoolClassifier(encoder, config.num_labels, config.dropout)
    model.head.load_state_dict(load_file(folder / HEAD_FILE))
    return model.eval()


def config_dict(config: FinetuneConfig) -> dict:
    """A FinetuneConfig as a plain dict (for results.json)."""
    return asdict(config)


def config_from_dict(values: dict) -> FinetuneConfig:
    """The FinetuneConfig of a dict written by `config_dict`."""
    return FinetuneConfig(**values)


def paired_bootstrap(correct_a: Sequence[bool], correct_b: Sequence[bool], *, samples: int = 10_000,
                     seed: int = 0) -> dict[str, float]:
    """Accuracy difference a - b on the same sentences, its 95% bootstrap interval, and how often
    a resampled test set has b at least as good as a."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected two equally long 1-D lists, got shapes {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, a.size, size=(samples, a.size))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    return {"difference": float(a.mean() - b.mean()), "low": float(np.quantile(diffs, 0.025)),
            "high": float(np.quantile(diffs, 0.975)), "p_not_better": float((diffs <= 0).mean())}
