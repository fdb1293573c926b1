"""Measuring training: time, FLOPs per token, a measured peak, MFU, and where the memory goes.

Conventions (tested in ``tests/test_scale.py``):

- Times are medians over ``repeats`` calls after ``warmup`` calls (`median_seconds`); on a GPU the
  device is synchronised around each call, so the time is the kernels', not their launch.
- The peak of a device (`matmul_peak`) is *measured*: the best rate of a square matrix multiply
  in the given dtype, 2 n^3 FLOPs per multiply. A datasheet's figure is what the hardware could do
  in the best case; this is what PyTorch gets out of it here, the honest denominator of MFU.
- Training FLOPs per token (`flops_per_token`) are 6 N + 12 L T d (Kaplan et al. 2020, table 1;
  PaLM, Chowdhery et al. 2022, appendix B): 2 FLOPs per weight forward and 4 backward for the N
  weights of the matrix multiplies (the output layer included, also when it is tied to the token
  embedding; lookups such as position embeddings excluded), plus the attention scores and their
  weighted sum. PyTorch's ``FlopCounterMode`` counts exactly 6 N for the matrix multiplies. MFU (model FLOPs
  utilisation) is tokens/s x FLOPs per token / peak: recomputation (gradient checkpointing) adds
  work that MFU deliberately does not count.
- Memory of the training *state* (`state_bytes`) per parameter: weights, gradients and AdamW's
  two moments, each at the given number of bytes; with mixed precision the optimizer also keeps
  float32 master weights. `zero_bytes` divides them over data-parallel devices as the ZeRO paper
  does (Rajbhandari et al. 2020, figure 1: 2 + 2 + K bytes a parameter, K = 12 for mixed-precision
  Adam).
- Activation memory is what autograd keeps for the backward pass: `saved_activation_bytes`
  measures it (each storage counted once, parameters excluded) and `gpt_activation_bytes` is the
  formula for `companion.gpt.GPT` with the fused attention kernel, derived tensor by tensor.
- `peak_bytes` measures the peak of the bytes allocated on the CPU while a function runs, above
  what was allocated before, with PyTorch's profiler (on a GPU use
  ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
                   device: torch.device | str = "cpu") -> float:
    """Median wall-clock seconds of `fn()` over `repeats` calls, after `warmup` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(*, size: int = 1024, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", repeats: int = 10) -> float:
    """Measured FLOP/s of a `size` x `size` matrix multiply in `dtype`: the best of `repeats`."""
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be >= 1, got {size} and {repeats}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device, dtype) for _ in range(2))
    best = min(median_seconds(lambda: a @ b, repeats=1, warmup=0, device=device)
               for _ in range(repeats + 1))  # the first call warms up and rarely wins
    return 2 * size**3 / best


def flops_per_token(n_params: int, *, n_layer: int, n_ctx: int, d_model: int) -> float:
    """Training FLOPs per token: 6 N + 12 L T d for the N weights of the matrix multiplies."""
    if min(n_params, n_layer, n_ctx, d_model) < 0:
        raise ValueError("parameter count and sizes must be >= 0")
    return 6 * n_params + 12 * n_layer * n_ctx * d_model


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the fraction of the peak that the model's own FLOPs used."""
    if peak_flops <= 0 or tokens_per_second < 0 or flops_per_token < 0:
        raise ValueError("peak_flops must be > 0 and the other two >= 0")
    return tokens_per_second * flops_per_token / peak_flops


@dataclass(frozen=True)
class StateBytes:
    """Bytes of a training state: weights, gradients, optimizer (moments and master weights)."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        """All three together."""
        return self.weights + self.gradients + self.optimizer


def state_bytes(n_params: int, *, weight_bytes: int = 4, grad_bytes: int = 4,
                moment_bytes: int = 4, master_bytes: int = 0) -> StateBytes:
    """Memory of weights, gradients and AdamW's two moments (plus master weights) for N parameters."""
    if n_params < 0 or min(weight_bytes, grad_bytes, moment_bytes, master_bytes) < 0:
        raise ValueError("the parameter count and byte sizes must be >= 0")
    return StateBytes(n_params * weight_bytes, n_params * grad_bytes,
                      n_params * (2 * moment_bytes + master_bytes))


def zero_bytes(n_params: int, n_devices: int, stage: int, *, k: int = 12) -> float:
    """Bytes of training state per device under ZeRO stage 0-3 (2 + 2 + K bytes a parameter)."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO has stages 0 (plain data parallel) to 3, got {stage}")
    if n_devices < 1 or n_params < 0:
        raise ValueError(f"n_devices must be >= 1 and n_params >= 0, got {n_devices}, {n_params}")
    weights, grads, optimizer = 2 * n_params, 2 * n_params, k * n_params
    shard = [(), ("optimizer",), ("optimizer", "grads"), ("optimizer", "grads", "weights")][stage]
    parts = {"weights": weights, "grads": grads, "optimizer": optimizer}
    return sum(v / n_devices if name in shard else v for name, v in parts.items())


def gpt_activation_bytes(config, batch: int, seq: int, *, bytes_per_number: int = 4) -> int:
    """Bytes autograd saves in one training forward of `companion.gpt.GPT` (fused attention).

    Per layer and token: the two LayerNorms' inputs and outputs (4d) and statistics (4), q, k, v
    and the attention output (4d) and its log-sum-exp (one per head), the MLP's two 4d-wide
    tensors (8d): 16d + n_head + 4 numbers, plus one T x T float mask per layer. Outside the
    layers: the final LayerNorm (2d + 2), the logits of the T - 1 predicting positions, and the
    token ids (int64: ids, positions, targets). Exact for `companion.gpt` in float32 (tested).
    """
    if batch < 1 or seq < 1:
        raise ValueError(f"batch and seq must be >= 1, got {batch} and {seq}")
    d, h, L, V = config.n_embd, config.n_head, config.n_layer, config.vocab_size
    tokens = batch * seq
    numbers = (L * (tokens * (16 * d + h + 4) + seq * seq)
               + tokens * (2 * d + 2) + batch * (seq - 1) * V + 1)  # + the loss itself
    targets = batch * (seq - 1) if batch > 1 else 0  # one sequence: the targets are a view of the ids
    ids = 8 * (tokens + seq + targets)
    return bytes_per_number * numbers + ids


def saved_activation_bytes(fn: Callable[[], object], model: torch.nn.Module | None = None) -> int:
    """Measured bytes autograd saves for the backward pass while `fn()` runs (parameters excluded)."""
    skip = set() if model is None else {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence what C++ writes to file descriptor 2 (the profiler's start and stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], object]) -> int:
    """Measured peak of the CPU bytes allocated while `fn()` runs, above those allocated before."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
