"""Reproducibility: one seed for every generator, deterministic kernels, a fixed thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DEFAULT_THREADS = 2


def set_threads(threads: int | None = None) -> int:
    """Fix torch's CPU thread count (default $COMPANION_THREADS or 2); 0 keeps torch's default.

    Matrix products sum in a different order with another thread count, which changes the last
    digits of results: the book's stored outputs were made with 2 threads.
    """
    if threads is None:
        threads = int(os.environ.get("COMPANION_THREADS", DEFAULT_THREADS))
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def seed_everything(seed: int = 0, *, deterministic: bool = True) -> int:
    """Seed Python, NumPy and torch (CPU and every GPU); optionally ask for deterministic kernels."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed
