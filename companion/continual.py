"""Continual learning: elastic weight consolidation, replay, and how much is forgotten.

- `fisher_diagonal`: the empirical Fisher diagonal, the mean of squared gradients of the
  log-likelihood of the *true* labels, in eval mode. Per example (per_example=True, what
  Kirkpatrick et al. 2017 use) or, faster, per batch: the square of a batch's mean gradient, an
  approximation that is never larger (a mean of squares >= the square of the mean) and near a
  minimum about 1/batch_size of it, so lambda must grow to match.
- `EWCPenalty` (Kirkpatrick et al., 2017): (lambda / 2) * sum_i F_i (theta_i - theta*_i)^2 over the
  parameters that are trainable in the model and have an anchor theta* and a Fisher value F.
- `ReplayBuffer` keeps a uniform sample of every example it has seen (reservoir sampling, Vitter's
  algorithm R); `replay_mix` mixes old examples into a new task's data at a fixed fraction.
- `continual_metrics` reads acc[i][j], the accuracy on task j after training stage i (tasks and
  stages 0-based, stage i trains task i): average accuracy and backward/forward transfer (Lopez-Paz
  & Ranzato, 2017, GEM) and average forgetting (Chaudhry et al., 2018, RWalk); `accuracy_frame`
  is the matrix as a DataFrame.

>>> fisher = fisher_diagonal(model, data["task_a"][:200])
>>> ewc = EWCPenalty.from_model(model, fisher, lam=100.0)
>>> loss = classifier_loss(model, batch) + ewc.penalty(model)        # while training on task b
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from companion.robust import LossFn, classifier_loss


def _default_collate(model: nn.Module) -> Callable[[list], dict]:
    """finetune.collate with the model's pad id (0 for a model without a config)."""
    from companion.finetune import collate, pad_id

    try:
        pad = pad_id(model)
    except AttributeError:
        pad = 0
    return lambda rows: collate(rows, pad)


def fisher_diagonal(model: nn.Module, data: Sequence, loss_fn: LossFn = classifier_loss, *,
                    per_example: bool = True, batch_size: int = 32,
                    collate_fn: Callable[[list], Any] | None = None) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal of every trainable parameter, name -> tensor (see the module
    docstring); loss_fn(model, batch) is the mean negative log-likelihood of a batch (a dict's
    tensors are moved to the model's device)."""
    if len(data) == 0:
        raise ValueError("no examples to estimate the Fisher information on")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters")
    collate_fn = collate_fn or _default_collate(model)
    size = 1 if per_example else batch_size
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        chunks = [list(data[i:i + size]) for i in range(0, len(data), size)]
        device = next(iter(params.values())).device
        for rows in chunks:
            batch = collate_fn(rows)
            if isinstance(batch, dict):
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            grads = torch.autograd.grad(loss_fn(model, batch), list(params.values()), allow_unused=True)
            for name, g in zip(params, grads):
                if g is not None:
                    total[name] += g.detach().float() ** 2
    finally:
        model.train(was_training)
    return {n: (t / len(chunks)).to(params[n].dtype) for n, t in total.items()}


@dataclass(frozen=True)
class EWCPenalty:
    """Anchor parameters theta*, their Fisher diagonal F and the strength lambda of EWC."""

    anchor: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    lam: float

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"lam is the strength of the penalty, >= 0; got {self.lam!r}")
        if set(self.anchor) != set(self.fisher):
            raise ValueError("anchor and fisher must name the same parameters; only in one: "
                             f"{sorted(set(self.anchor) ^ set(self.fisher))[:5]}")
        for name, t in self.anchor.items():
            if t.shape != self.fisher[name].shape:
                raise ValueError(f"{name}: anchor shape {tuple(t.shape)} but Fisher shape "
                                 f"{tuple(self.fisher[name].shape)}")

    @classmethod
    def from_model(cls, model: nn.Module, fisher: dict[str, torch.Tensor], lam: float) -> EWCPenalty:
        """Anchor at the model's present weights (copies), for the parameters that have a Fisher value."""
        params = dict(model.named_parameters())
        missing = sorted(set(fisher) - set(params))
        if missing:
            raise ValueError(f"the Fisher names parameters the model lacks: {missing[:5]}")
        anchor = {n: params[n].detach().clone() for n in fisher}
        return cls(anchor, {n: f.detach().clone() for n, f in fisher.items()}, float(lam))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """(lam / 2) * sum F (theta - theta*)^2 over the trainable parameters the anchor also holds."""
        terms = [(self.fisher[n].to(p.device, torch.float32)
                  * (p.float() - self.anchor[n].to(p.device, torch.float32)) ** 2).sum()
                 for n, p in model.named_parameters() if p.requires_grad and n in self.anchor]
        if not terms:
            raise ValueError("no trainable parameter of the model is in the EWC anchor: "
                             "was it made from a different model?")
        return self.lam / 2 * torch.stack(terms).sum()


class ReplayBuffer:
    """A uniform sample of at most `capacity` of all examples added (reservoir sampling)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.seen = capacity, 0
        self._rng = random.Random(seed)
        self._items: list = []

    def add(self, examples: Sequence) -> None:
        """Offer every example once: the n-th seen is kept with probability capacity / n."""
        for example in examples:
            self.seen += 1
            if len(self._items) < self.capacity:
                self._items.append(example)
            else:
                j = self._rng.randrange(self.seen)
                if j < self.capacity:
                    self._items[j] = example

    @property
    def examples(self) -> list:
        """The examples held (a new list)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


def replay_mix(new_data: Sequence, old_data: Sequence, fraction: float, seed: int = 0) -> list:
    """All new examples plus old ones drawn without replacement so that round(fraction * total) of
    the shuffled result is old; a new list, the inputs untouched (examples are shared, not copied)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction is the share of old examples in the mix, in [0, 1); got {fraction!r}")
    if len(new_data) == 0:
        raise ValueError("new_data is empty")
    n_old = round(fraction * len(new_data) / (1 - fraction))
    if n_old > len(old_data):
        raise ValueError(f"fraction {fraction} needs {n_old} old examples but old_data has "
                         f"{len(old_data)}: lower the fraction or keep more old examples")
    rng = np.random.default_rng(seed)
    old = [old_data[int(i)] for i in rng.choice(len(old_data), size=n_old, replace=False)]
    mixed = list(new_data) + old
    return [mixed[int(i)] for i in rng.permutation(len(mixed))]


def _matrix(acc) -> np.ndarray:
    a = np.asarray(acc, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"acc must be a square matrix (stages x tasks) of at least 2 tasks, "
                         f"got shape {a.shape}")
    if not np.isfinite(a[np.tril_indices(len(a))]).all():
        raise ValueError("acc must be finite on and below the diagonal (tasks already trained)")
    return a


def forgetting_per_task(acc) -> np.ndarray:
    """f_j = max_{j <= l < T-1} acc[l][j] - acc[T-1][j] for each task j < T-1 (Chaudhry et al., 2018,
    take the max over all l < T-1; the stages before task j is trained are left out here)."""
    a = _matrix(acc)
    T = len(a)
    return np.array([a[j:T - 1, j].max() - a[T - 1, j] for j in range(T - 1)])


def continual_metrics(acc, baseline: Sequence[float] | None = None) -> dict[str, float]:
    """Average final accuracy ACC = mean_j acc[T-1][j]; BWT = mean_{j<T-1} (acc[T-1][j] - acc[j][j])
    (Lopez-Paz & Ranzato, 2017); forgetting = mean_j f_j (Chaudhry et al., 2018); with `baseline`
    (each task's accuracy before any training) FWT = mean_{j>0} (acc[j-1][j] - baseline[j])."""
    a = _matrix(acc)
    T = len(a)
    out = {"average_accuracy": float(a[T - 1].mean()),
           "bwt": float(np.mean([a[T - 1, j] - a[j, j] for j in range(T - 1)])),
           "forgetting": float(forgetting_per_task(a).mean())}
    if baseline is not None:
        b = np.asarray(baseline, dtype=float)
        if b.shape != (T,):
            raise ValueError(f"baseline needs one accuracy per task ({T}), got shape {b.shape}")
        out["fwt"] = float(np.mean([a[j - 1, j] - b[j] for j in range(1, T)]))
    return out


def accuracy_frame(acc, tasks: Sequence[str] | None = None):
    """The matrix as a pandas DataFrame: rows "after <task>" (stages), columns the tasks."""
    import pandas as pd

    a = _matrix(acc)
    tasks = list(tasks) if tasks is not None else [f"task {j}" for j in range(len(a))]
    if len(tasks) != len(a):
        raise ValueError(f"{len(tasks)} task names for {len(a)} tasks")
    return pd.DataFrame(a, index=[f"after {t}" for t in tasks], columns=tasks)
