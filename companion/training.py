"""A small pre-training loop on Hugging Face Accelerate, with atomic checkpoints and exact resume.

``train(model, data, steps=...)`` works with any model whose ``model(**batch)`` returns an object
with ``.loss`` (every `transformers` model does). The same code runs on one CPU, one GPU, or
several GPUs/machines under ``accelerate launch`` (DDP), unchanged.

Conventions (decided here, tested in ``tests/test_training.py``):

- ``batch_size`` is the *global* micro-batch (summed over processes; each process gets
  ``batch_size / num_processes`` examples), so one optimizer step sees
  ``batch_size * grad_accum`` examples whatever the number of processes.
- The data order is a function of ``(seed, epoch)`` only: a permutation of the whole data set per
  epoch, cut into global batches, the incomplete last batch dropped. A checkpoint stores
  ``(epoch, batch index)``, so a resumed run (even on another number of processes) sees the same
  batches as an uninterrupted one. The checkpoint restores the Python, NumPy, torch and CUDA global
  RNGs; a ``collate_fn`` with its own generator (random masking) is not restored.
- AdamW (betas 0.9, 0.95) decays only weights with >= 2 dimensions that do not belong to an
  ``nn.Embedding``; biases, norm weights and embeddings (token and position, and an output layer
  tied to the token embedding) get no weight decay.
- Learning rate: linear warmup from ``lr / warmup`` to ``lr`` over ``warmup`` steps, then cosine
  decay to ``MIN_LR_RATIO * lr`` (10%) at the last step.
- Gradient accumulation divides each micro-batch loss by ``grad_accum``: with per-token mean
  losses this gives the big batch's loss and gradient when every micro-batch has the same number of
  target tokens (fixed-length blocks), and differs slightly otherwise.
- Losses are read back from the device once every ``log_every`` steps (one sync, not one per
  step); a NaN/inf loss is then reported with the exact step where it first appeared.
- Every ``eval_every`` steps (and at the end): evaluate, then write ``last.pt`` (everything needed
  to resume) and, when the eval loss improved, ``best.pt`` (model weights only), each atomically.
  Under DDP the main process writes, with its RNG state (every process starts from the same seed).
  ``resume=True`` continues from ``last.pt`` (from scratch if there is none); ``early_stopping_patience``
  stops after that many evaluations in a row without a new best eval loss.

Tested on CPU with one process and with two (DDP, gloo backend). Not tested here: GPUs, fp16/bf16
on a GPU, FSDP (its checkpoint would hold only the main process's shard of the optimizer state).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env, send_to_device
from torch import nn
from torch.utils.data import DataLoader, default_collate

from companion.book import progress as progress_bar
from companion.device import precision_for
from companion.seeding import seed_everything

LAST, BEST = "last.pt", "best.pt"
MIN_LR_RATIO = 0.1
HISTORY_COLUMNS = ["step", "train_loss", "eval_loss", "lr", "tokens_per_s", "elapsed"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What `train` returns: the logged history and the state at the end."""

    history: pd.DataFrame  # one row per log window: HISTORY_COLUMNS
    losses: list[float]  # the training loss of every optimizer step so far (restored on resume)
    step: int  # optimizer steps done
    best_eval_loss: float  # inf without eval data
    stopped_early: bool
    tokens_per_s: float  # over this call's optimizer steps, evaluation and checkpoints excluded
    checkpoint_dir: Path | None = None


@dataclass
class _State:
    """Everything about the run's progress that a checkpoint must restore."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # index of the next global batch within the epoch
    losses: list[float] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)
    best: float = math.inf
    bad_evals: int = 0
    stopped: bool = False
    elapsed: float = 0.0


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of trainable parameters with and without weight decay (see the module docstring)."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied parameters appear once, under their first name
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decayed weights first, then the rest with weight_decay 0."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model)
    return [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]


def lr_factor(step: int, *, steps: int, warmup: int, min_ratio: float = MIN_LR_RATIO) -> float:
    """Multiplier of the peak lr at 0-based optimizer step `step`: linear warmup, cosine decay."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup - 1))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation of `n` examples used in `epoch`: a function of (seed, epoch) only."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=generator).tolist()


def _local_batches(n: int, batch_size: int, seed: int, epoch: int, start: int,
                   rank: int, world: int) -> Iterator[list[int]]:
    """This process's slice of every global batch from (epoch, start) on, forever."""
    local = batch_size // world
    while True:
        order = epoch_order(n, seed, epoch)
        for b in range(start, n // batch_size):
            first = b * batch_size + rank * local
            yield order[first:first + local]
        epoch, start = epoch + 1, 0


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint written by `train` (only load files you trust); load its weights into `model`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # holds RNG states, history
    if model is not None:
        model.load_state_dict(checkpoint["model"])
    return checkpoint


def _rng_state() -> dict[str, Any]:
    """The state of every random generator the training step may use."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `_rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tokens(batch: dict[str, Any]) -> int:
    """Positions in the batch's input_ids (0 without them); shape only, no device sync."""
    ids = batch.get("input_ids") if isinstance(batch, dict) else None
    return ids.numel() if isinstance(ids, torch.Tensor) else 0


@torch.no_grad()
def _evaluate(acc: Accelerator, model: nn.Module, data, batch_size: int, collate_fn: Callable,
              max_batches: int | None) -> float:
    """Mean loss over the data (or its first `max_batches` batches), batch losses weighted by examples."""
    model.eval()
    n_batches = math.ceil(len(data) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    total = torch.zeros(2, device=acc.device, dtype=torch.float64)
    for b in range(n_batches):
        batch_indices = range(b * batch_size, min(len(data), (b + 1) * batch_size))
        mine = list(batch_indices)[acc.process_index::acc.num_processes]
        if mine:
            batch = send_to_device(collate_fn([data[i] for i in mine]), acc.device)
            total[0] += model(**batch).loss.double() * len(mine)
            total[1] += len(mine)
    total = acc.reduce(total, "sum")
    model.train()
    return (total[0] / total[1]).item()


def _accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator; in a single process (a notebook) a new precision replaces the previous one."""
    shared = AcceleratorState._shared_state  # accelerate keeps one precision per process otherwise
    if shared and shared.get("_mixed_precision") != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision)


def _non_finite_message(value: float, step: int, steps: int, lr: float, max_grad_norm: float | None) -> str:
    """What went wrong, where, and what to try."""
    return (f"training loss is {value} at step {step} of {steps} (lr {lr:.3g}). Try: a lower lr or a "
            f"longer warmup; gradient clipping (max_grad_norm, now {max_grad_norm}); checking the data "
            "(empty or garbage batches, labels all -100, token ids >= the vocabulary size); "
            "bf16 or fp32 instead of fp16.")


def train(model: nn.Module, train_data, *, eval_data=None, steps: int, lr: float = 3e-4,
          batch_size: int = 32, grad_accum: int = 1, warmup: int = 0, weight_decay: float = 0.1,
          max_grad_norm: float | None = 1.0, eval_every: int = 100, eval_batches: int | None = None,
          collate_fn: Callable | None = None, mixed_precision: str | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          early_stopping_patience: int | None = None, seed: int = 0, progress: bool = True,
          log_every: int = 10) -> TrainResult:
    """Train `model` for `steps` optimizer steps on `train_data` (a map-style dataset of dicts)."""
    if mixed_precision is None:  # `accelerate launch --mixed_precision X` sets this variable, else by device
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if mixed_precision == "no":
            device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
            mixed_precision = precision_for(device).accelerate_name
    acc = _accelerator(mixed_precision)
    world, rank = acc.num_processes, acc.process_index
    per_epoch = len(train_data) // batch_size
    if min(steps, grad_accum, eval_every, log_every) < 1:
        raise ValueError("steps, grad_accum, eval_every and log_every must be at least 1")
    if batch_size % world or per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes and at most "
                         f"the {len(train_data)} training examples")
    collate_fn = collate_fn or default_collate
    config = {"batch_size": batch_size, "grad_accum": grad_accum, "seed": seed, "n_train": len(train_data)}
    seed_everything(seed, deterministic=False)

    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, steps=steps, warmup=warmup))
    own_forward = model.__dict__.get("forward")  # accelerate patches forward for mixed precision
    module, (model, optimizer) = model, acc.prepare(model, optimizer)

    st, folder = _State(), Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and folder is not None and (folder / LAST).exists():
        ck = load_checkpoint(folder / LAST, acc.unwrap_model(model))
        if ck["config"] != config:
            raise ValueError(f"cannot resume {folder / LAST}: written with {ck['config']}, now {config}")
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        st = ck["state"]

    # Its own generator: creating the loader's iterator must not draw from the global torch RNG.
    loader = DataLoader(train_data, collate_fn=collate_fn, generator=torch.Generator(),
                        batch_sampler=_local_batches(len(train_data), batch_size, seed, st.epoch, st.batch,
                                                     rank, world))
    batches = iter(loader)
    bar = progress_bar(total=steps, initial=st.step, desc="train",
                       disable=not (progress and acc.is_main_process))
    pending: list[torch.Tensor] = []
    window_tokens = tokens = 0
    train_time, start_elapsed = 0.0, st.elapsed
    t0 = t_window = time.perf_counter()
    lr_now = scheduler.get_last_lr()[0]
    model.train()

    def flush() -> None:
        """Read the pending losses back (one sync), check them, append a history row."""
        nonlocal window_tokens, tokens, train_time, t_window
        values = acc.reduce(torch.stack(pending), "mean").tolist()
        first = st.step - len(values) + 1
        for i, value in enumerate(values):
            if not math.isfinite(value):
                bad = first + i
                raise NonFiniteLossError(_non_finite_message(value, bad, steps, lr * lr_factor(
                    bad - 1, steps=steps, warmup=warmup), max_grad_norm))
        seconds = time.perf_counter() - t_window
        tokens, train_time = tokens + window_tokens, train_time + seconds
        st.losses += values
        st.elapsed = start_elapsed + time.perf_counter() - t0
        row = {"step": st.step, "train_loss": sum(values) / len(values), "eval_loss": math.nan,
               "lr": lr_now, "tokens_per_s": window_tokens / seconds, "elapsed": st.elapsed}
        st.rows.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{lr_now:.2e}",
                        tok_s=f"{row['tokens_per_s']:,.0f}")
        pending.clear()
        window_tokens, t_window = 0, time.perf_counter()

    try:
        while st.step < steps and not st.stopped:
            step_loss = torch.zeros((), device=acc.device)
            for micro in range(grad_accum):
                batch = send_to_device(next(batches), acc.device)
                window_tokens += _tokens(batch) * world
                sync = micro == grad_accum - 1  # all-reduce the gradients only on the last micro-batch
                with contextlib.nullcontext() if sync else acc.no_sync(model):
                    loss = model(**batch).loss / grad_accum
                    acc.backward(loss)
                step_loss += loss.detach().float()
            if max_grad_norm:
                acc.clip_grad_norm_(model.parameters(), max_grad_norm)
            lr_now = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            st.step += 1
            st.epoch, st.batch = divmod(st.epoch * per_epoch + st.batch + grad_accum, per_epoch)
            pending.append(step_loss)
            bar.update(1)
            checkpoint_due = st.step % eval_every == 0 or st.step == steps
            if st.step % log_every == 0 or checkpoint_due:
                flush()
            if not checkpoint_due:
                continue
            improved = False
            if eval_data is not None:
                eval_loss = _evaluate(acc, model, eval_data, batch_size, collate_fn, eval_batches)
                st.rows[-1]["eval_loss"] = eval_loss
                improved = eval_loss < st.best
                st.best, st.bad_evals = (eval_loss, 0) if improved else (st.best, st.bad_evals + 1)
                st.stopped = early_stopping_patience is not None and st.bad_evals >= early_stopping_patience
            if folder is not None:
                weights = acc.get_state_dict(model)  # a collective under FSDP: every process calls it
                if acc.is_main_process:
                    atomic_save({"state": st, "config": config, "model": weights,
                                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "rng": _rng_state()}, folder / LAST)
                    if improved:
                        atomic_save({"model": weights, "step": st.step, "eval_loss": st.best}, folder / BEST)
                acc.wait_for_everyone()
            t_window = time.perf_counter()  # evaluation and checkpoints do not count in tokens/s
    finally:  # also after an error: close the bar, give the model back its own forward
        bar.close()
        module.__dict__.pop("_original_forward", None)
        module.__dict__.pop("forward", None)
        if own_forward is not None:
            module.forward = own_forward
    history = pd.DataFrame(st.rows, columns=HISTORY_COLUMNS)
    return TrainResult(history=history, losses=list(st.losses), step=st.step, best_eval_loss=st.best,
                       stopped_early=st.stopped, tokens_per_s=tokens / train_time if train_time else math.nan,
                       checkpoint_dir=folder)
