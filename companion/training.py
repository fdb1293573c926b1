"""A small pre-training loop on Hugging Face Accelerate, with atomic checkpoints and exact resume.

``train(model, data, steps=...)`` works with any model whose ``model(**batch)`` returns an object
with ``.loss`` (every `transformers` model does). The same code runs on one CPU, one GPU, or
several GPUs/machines under ``accelerate launch`` (DDP), unchanged.

Conventions (decided here, tested in ``tests/test_training.py``):

- The device is ``$COMPANION_DEVICE`` when set (checked by `companion.device.pick_device`: an
  unknown or unavailable device is an error), else accelerate's choice; under ``accelerate launch``
  the launcher places the processes and ``$COMPANION_DEVICE`` must agree with it.
- Nonsense arguments (``batch_size=0``, a negative lr, ...) and a ``checkpoint_dir`` that is a file
  or cannot be created or written raise a ValueError before the first step.
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
- Losses and gradient norms (computed every step, also without clipping) are read back from the
  device once every ``log_every`` steps (one sync, not one per step) and before every checkpoint; a
  NaN/inf training loss, gradient norm (except under fp16 loss scaling, which skips such steps
  itself), eval loss or weight raises `NonFiniteLossError` naming the step, and that step writes
  no checkpoint: ``last.pt`` keeps the last good state.
- Every ``eval_every`` steps (and at the end): evaluate, then write ``last.pt`` (everything needed
  to resume), then, when the eval loss improved, ``best.pt`` (model weights only), each atomically.
  ``best.pt`` belongs to the run in ``last.pt``: a run without eval data deletes an older one, and
  ``resume=True`` rewrites it from ``last.pt`` after a crash between the two writes. Temporary files
  left by a killed run are deleted at the start. Under DDP the main process writes, with its RNG
  state (every process starts from the same seed).
- Checkpoints hold only tensors, plain containers and numbers, and `load_checkpoint` reads them with
  ``torch.load(weights_only=True)``: a planted file cannot run code.
- ``resume=True`` continues from ``last.pt`` (from scratch if there is none). It checks the settings
  recorded there (``CONFIG_KEYS``): a change raises a ValueError unless ``allow_changes=True``, which
  continues with the new values (learning-rate schedule rebuilt, data position carried over).
  ``early_stopping_patience`` stops after that many evaluations in a row without a new best eval loss.

Tested on CPU with one process and with two (DDP, gloo backend). Not tested here: GPUs, fp16/bf16
on a GPU, FSDP (its checkpoint would hold only the main process's shard of the optimizer state).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env, send_to_device
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, default_collate

from companion.book import progress as progress_bar
from companion.device import pick_device, precision_for
from companion.seeding import seed_everything

LAST, BEST = "last.pt", "best.pt"
MIN_LR_RATIO = 0.1
HISTORY_COLUMNS = ["step", "train_loss", "eval_loss", "lr", "tokens_per_s", "elapsed"]
# The settings a checkpoint records: resuming with another value changes the run (see `train`).
CONFIG_KEYS = ("lr", "steps", "warmup", "batch_size", "grad_accum", "weight_decay", "max_grad_norm", "seed",
               "n_train", "n_eval", "eval_every", "eval_batches", "early_stopping_patience",
               "mixed_precision")


class NonFiniteLossError(FloatingPointError):
    """The training loss, a gradient norm, the eval loss or a weight became NaN or infinite."""


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
    """Everything about the run's progress that a checkpoint must restore (stored as a plain dict)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # index of the next global batch within the epoch
    losses: list[float] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)
    best: float = math.inf
    best_step: int | None = None  # the step whose weights best.pt holds
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
    """Read a checkpoint written by `train` (tensors and plain data only); load its weights into `model`."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(
            f"refused to load {path}: it holds objects other than tensors and plain data, which could run "
            f"code ({str(err).splitlines()[0]}). Delete it, or train again without resume=True; a "
            "checkpoint written by an older version of companion.training must be remade.") from err
    if model is not None:
        model.load_state_dict(checkpoint["model"])
    return checkpoint


def _rng_state() -> dict[str, Any]:
    """The state of every random generator the training step may use, as plain lists and tensors."""
    version, internal, gauss_next = random.getstate()
    numpy = np.random.get_state(legacy=False)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "numpy": {"bit_generator": numpy["bit_generator"], "key": numpy["state"]["key"].tolist(),
                      "pos": int(numpy["state"]["pos"]), "has_gauss": int(numpy["has_gauss"]),
                      "gauss": float(numpy["gauss"])},
            "torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `_rng_state` returned."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    np.random.set_state({"bit_generator": numpy["bit_generator"],
                         "state": {"key": np.array(numpy["key"], dtype=np.uint32), "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
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


@torch.no_grad()
def _weights_finite(acc: Accelerator, model: nn.Module) -> bool:
    """Whether every weight is finite on every process (one sync)."""
    bad = sum((~torch.isfinite(p)).sum() for p in model.parameters() if p.is_floating_point())
    return acc.reduce(torch.as_tensor(bad, device=acc.device).float(), "sum").item() == 0


_RULES = {"an integer >= 1": lambda v: isinstance(v, Integral) and v >= 1,
          "an integer >= 0": lambda v: isinstance(v, Integral) and v >= 0,
          "an integer >= 1 or None": lambda v: v is None or isinstance(v, Integral) and v >= 1,
          "a finite number >= 0": lambda v: isinstance(v, Real) and math.isfinite(v) and v >= 0,
          "a number >= 0 or None": lambda v: v is None or isinstance(v, Real) and v >= 0}
_ARGUMENTS = {"steps": "an integer >= 1", "batch_size": "an integer >= 1", "grad_accum": "an integer >= 1",
              "eval_every": "an integer >= 1", "log_every": "an integer >= 1", "warmup": "an integer >= 0",
              "seed": "an integer >= 0", "eval_batches": "an integer >= 1 or None",
              "early_stopping_patience": "an integer >= 1 or None", "lr": "a finite number >= 0",
              "weight_decay": "a finite number >= 0", "max_grad_norm": "a number >= 0 or None"}


def _check_arguments(**values: Any) -> None:
    """A ValueError naming every argument of `train` out of its range (`_ARGUMENTS`), before anything runs."""
    bad = [f"{name}={values[name]!r} (must be {rule})" for name, rule in _ARGUMENTS.items()
           if not _RULES[rule](values[name])]
    if bad:
        raise ValueError(f"train() got {', '.join(bad)}: pass values in those ranges")


def _prepare_folder(folder: Path, clean: bool) -> None:
    """Create the checkpoint folder and check that it can be written; delete stale temporary files."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir {folder} is a file, not a folder: pass a folder (it is created "
                         "if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"checkpoint_dir {folder} cannot be created or written ({err}): pass a folder "
                         "you can write to, or checkpoint_dir=None to keep no checkpoints") from err
    if clean:  # left by a run killed inside atomic_save or here
        for name in (LAST, BEST, "write-check"):
            for stale in folder.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)


def _accelerator(mixed_precision: str | None) -> tuple[Accelerator, str]:
    """An Accelerator on $COMPANION_DEVICE or accelerate's device, and its precision (None: the device's).

    In a single process (a notebook) a new device or precision replaces the previous one; under several
    processes the launcher has placed them, and $COMPANION_DEVICE must agree.
    """
    asked, wanted = os.environ.get("COMPANION_DEVICE"), None
    if asked:
        try:
            wanted = pick_device(asked)
        except (ValueError, RuntimeError) as err:  # an unknown or unavailable device
            raise type(err)(f"COMPANION_DEVICE={asked}: {err}") from err
    use_cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    state = PartialState(cpu=use_cpu)
    if state.num_processes > 1:
        if wanted is not None and wanted.type != state.device.type:
            raise ValueError(f"COMPANION_DEVICE={asked} but accelerate launch put this process on "
                             f"{state.device}: under several processes the launcher chooses the device "
                             "(e.g. --cpu); unset COMPANION_DEVICE or make the two agree")
    else:
        if wanted is not None and use_cpu and wanted.type != "cpu":
            raise ValueError(f"COMPANION_DEVICE={asked} and ACCELERATE_USE_CPU=1 disagree: unset one of them")
        forced = os.environ.get("ACCELERATE_TORCH_DEVICE")
        device = wanted or torch.device("cpu" if use_cpu else forced or state.default_device)
        if state.device != device:  # a fresh state on that device (accelerate reads this variable)
            AcceleratorState._reset_state(reset_partial_state=True)
            os.environ["ACCELERATE_TORCH_DEVICE"] = str(device)
            try:
                state = PartialState(cpu=device.type == "cpu")
            finally:
                if forced is None:
                    del os.environ["ACCELERATE_TORCH_DEVICE"]
                else:
                    os.environ["ACCELERATE_TORCH_DEVICE"] = forced
    if mixed_precision is None:  # `accelerate launch --mixed_precision X` sets this variable, else by device
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if mixed_precision == "no":
            mixed_precision = precision_for(state.device).accelerate_name
    shared = AcceleratorState._shared_state  # accelerate keeps one precision per process otherwise
    if shared and shared.get("_mixed_precision") != mixed_precision and state.num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=state.device.type == "cpu"), mixed_precision


def _changes(recorded: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """'name old -> new' for every setting that differs from the checkpoint's."""
    return [f"{k} {recorded.get(k, 'not recorded')!r} -> {config[k]!r}" for k in CONFIG_KEYS
            if k not in recorded or recorded[k] != config[k]]


def _non_finite_message(what: str, value: float, step: int, steps: int, lr: float,
                        max_grad_norm: float | None) -> str:
    """What went wrong, where, and what to try."""
    return (f"{what} is {value} at step {step} of {steps} (lr {lr:.3g}); no checkpoint was written for "
            "it (with a checkpoint_dir, last.pt holds the last good state: resume=True continues from it). "
            f"Try: a lower lr or a longer warmup; gradient clipping (max_grad_norm, now {max_grad_norm}); "
            "checking the data (empty or garbage batches, labels all -100, token ids >= the vocabulary "
            "size); bf16 or fp32 instead of fp16.")


def train(model: nn.Module, train_data, *, eval_data=None, steps: int, lr: float = 3e-4,
          batch_size: int = 32, grad_accum: int = 1, warmup: int = 0, weight_decay: float = 0.1,
          max_grad_norm: float | None = 1.0, eval_every: int = 100, eval_batches: int | None = None,
          collate_fn: Callable | None = None, mixed_precision: str | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          early_stopping_patience: int | None = None, seed: int = 0, progress: bool = True,
          log_every: int = 10, allow_changes: bool = False) -> TrainResult:
    """Train `model` for `steps` optimizer steps on `train_data` (a map-style dataset of dicts)."""
    _check_arguments(steps=steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum, warmup=warmup,
                     weight_decay=weight_decay, max_grad_norm=max_grad_norm, eval_every=eval_every,
                     eval_batches=eval_batches, early_stopping_patience=early_stopping_patience,
                     log_every=log_every, seed=seed)
    steps, batch_size, grad_accum, warmup, eval_every, log_every, seed = (
        int(v) for v in (steps, batch_size, grad_accum, warmup, eval_every, log_every, seed))
    if eval_data is not None and len(eval_data) == 0:
        raise ValueError("eval_data is empty: pass some examples, or eval_data=None")
    acc, mixed_precision = _accelerator(mixed_precision)
    world, rank = acc.num_processes, acc.process_index
    per_epoch = len(train_data) // batch_size
    if batch_size % world or per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes and at most "
                         f"the {len(train_data)} training examples")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        _prepare_folder(folder, clean=acc.is_main_process)
    collate_fn = collate_fn or default_collate
    config = {"lr": float(lr), "steps": steps, "warmup": warmup, "batch_size": batch_size,  # plain numbers
              "grad_accum": grad_accum, "weight_decay": float(weight_decay),
              "max_grad_norm": None if max_grad_norm is None else float(max_grad_norm), "seed": seed,
              "n_train": len(train_data), "n_eval": None if eval_data is None else len(eval_data),
              "eval_every": eval_every, "eval_batches": None if eval_batches is None else int(eval_batches),
              "early_stopping_patience": (None if early_stopping_patience is None
                                          else int(early_stopping_patience)),
              "mixed_precision": mixed_precision}
    seed_everything(seed, deterministic=False)

    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    schedule = partial(lr_factor, steps=steps, warmup=warmup)
    scheduler, raw_optimizer = LambdaLR(optimizer, schedule), optimizer
    own_forward = model.__dict__.get("forward")  # accelerate patches forward for mixed precision
    module, (model, optimizer) = model, acc.prepare(model, optimizer)

    st = _State()
    if resume and folder is not None and (folder / LAST).exists():
        ck = load_checkpoint(folder / LAST)
        changes = _changes(ck["config"], config)
        if changes and not allow_changes:
            raise ValueError(f"cannot resume {folder / LAST}: these settings differ from the ones it was "
                             f"written with: {'; '.join(changes)}. Pass the recorded values to continue that "
                             "run, allow_changes=True to continue it with the new ones, or resume=False (or "
                             "another checkpoint_dir) to start afresh.")
        acc.unwrap_model(model).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        _set_rng_state(ck["rng"])
        st = _State(**ck["state"])
        for group, decay in zip(optimizer.param_groups, (weight_decay, 0.0)):
            group.update(initial_lr=lr, weight_decay=decay)  # the recorded values unless allow_changes
        # The schedule from the new lr, steps and warmup: the same learning rates when they did not change.
        scheduler = LambdaLR(raw_optimizer, schedule, last_epoch=st.step - 1)
        old_batch, old_n = ck["config"].get("batch_size"), ck["config"].get("n_train")
        if (old_batch, old_n) != (batch_size, len(train_data)):  # the same position in the epoch, rounded up
            st.batch = -(-st.batch * (old_batch or batch_size) // batch_size)
            if st.batch >= per_epoch:
                st.epoch, st.batch = st.epoch + 1, 0
        if acc.is_main_process:  # a crash between writing last.pt and best.pt left best.pt behind
            if st.best_step is None:
                (folder / BEST).unlink(missing_ok=True)
            elif st.best_step == st.step:
                atomic_save({"model": ck["model"], "step": st.step, "eval_loss": st.best}, folder / BEST)

    # Its own generator: creating the loader's iterator must not draw from the global torch RNG.
    loader = DataLoader(train_data, collate_fn=collate_fn, generator=torch.Generator(),
                        batch_sampler=_local_batches(len(train_data), batch_size, seed, st.epoch, st.batch,
                                                     rank, world))
    batches = iter(loader)
    bar = progress_bar(total=steps, initial=min(st.step, steps), desc="train",
                       disable=not (progress and acc.is_main_process))
    pending: list[torch.Tensor] = []  # (loss, gradient norm) of each step since the last flush
    window_tokens = tokens = 0
    train_time, start_elapsed = 0.0, st.elapsed
    t0 = t_window = time.perf_counter()
    lr_now = scheduler.get_last_lr()[0]
    model.train()

    def flush() -> None:
        """Read the pending losses and gradient norms back (one sync), check them, append a history row."""
        nonlocal window_tokens, tokens, train_time, t_window
        values, norms = acc.reduce(torch.stack(pending), "mean").T.tolist()
        first = st.step - len(values) + 1
        for i, (value, norm) in enumerate(zip(values, norms)):
            for what, number in (("training loss", value), ("gradient norm", norm)):
                if not math.isfinite(number):
                    raise NonFiniteLossError(_non_finite_message(what, number, first + i, steps,
                                                                 lr * schedule(first + i - 1), max_grad_norm))
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

    no_norm = torch.zeros((), device=acc.device)
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
            # The norm also without clipping (at inf: no change); fp16 loss scaling skips non-finite steps.
            norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
            norm = no_norm if norm is None or acc.scaler is not None else norm.detach().float()
            lr_now = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            st.step += 1
            st.epoch, st.batch = divmod(st.epoch * per_epoch + st.batch + grad_accum, per_epoch)
            pending.append(torch.stack([step_loss, norm]))
            bar.update(1)
            checkpoint_due = st.step % eval_every == 0 or st.step == steps
            if st.step % log_every == 0 or checkpoint_due:
                flush()
            if not checkpoint_due:
                continue
            improved = False
            if eval_data is not None:
                eval_loss = _evaluate(acc, model, eval_data, batch_size, collate_fn, eval_batches)
                if not math.isfinite(eval_loss):
                    raise NonFiniteLossError(_non_finite_message("eval loss", eval_loss, st.step, steps,
                                                                 lr_now, max_grad_norm))
                st.rows[-1]["eval_loss"] = eval_loss
                improved = eval_loss < st.best
                st.best, st.bad_evals = (eval_loss, 0) if improved else (st.best, st.bad_evals + 1)
                st.best_step = st.step if improved else st.best_step
                st.stopped = early_stopping_patience is not None and st.bad_evals >= early_stopping_patience
            if folder is not None:
                if not _weights_finite(acc, model):
                    raise NonFiniteLossError(_non_finite_message("a weight", math.nan, st.step, steps, lr_now,
                                                                 max_grad_norm))
                weights = acc.get_state_dict(model)  # a collective under FSDP: every process calls it
                if acc.is_main_process:  # last.pt first: a crash before best.pt is repaired on resume
                    atomic_save({"state": asdict(st), "config": config, "model": weights,
                                 "optimizer": optimizer.state_dict(), "rng": _rng_state()}, folder / LAST)
                    if improved:
                        atomic_save({"model": weights, "step": st.step, "eval_loss": st.best}, folder / BEST)
                    elif st.best_step is None:  # no eval data: a best.pt there is another run's
                        (folder / BEST).unlink(missing_ok=True)
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
