"""What every chapter does first, and small helpers for stable, readable outputs."""

from __future__ import annotations

import logging
import os
import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
# Plain text bars everywhere: the same output in JupyterLab, nbval and a terminal, and no
# ipywidgets needed (tqdm.auto would warn without it).
from tqdm.std import tqdm

from companion.device import pick_device
from companion.plotting import use_book_style
from companion.seeding import seed_everything, set_threads


def quiet_libraries() -> None:
    """Silence progress bars and info logs of the Hugging Face libraries (they vary run to run)."""
    for name in ("transformers", "datasets", "huggingface_hub", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")


def setup(seed: int = 0, *, threads: int | None = None, device: str | None = None) -> torch.device:
    """Fix threads and seeds, set print precision and plot style, quiet the logs; return the device."""
    set_threads(threads)
    seed_everything(seed)
    np.set_printoptions(precision=4, suppress=True)
    torch.set_printoptions(precision=4, sci_mode=False)
    use_book_style()
    quiet_libraries()
    return pick_device(device)


def approx(value: float, digits: int = 3) -> str:
    """Format a number that may differ in its last digits on another CPU as "≈1.234".

    The test suite's sanitize file masks numbers written this way, so a chapter can print
    training losses and timings and guard them with asserts instead of exact comparison.
    """
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"approx() got {value}: a training run diverged or a timing failed")
    return f"≈{value:.{digits}f}"


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
             **kwargs) -> tqdm:
    """A text tqdm progress bar with the book's defaults."""
    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, **kwargs)


def versions(device: torch.device | str | None = None) -> str:
    """One line with the versions of Python and the main libraries (and the device), for a page."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for name in ("torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    if device is not None:
        parts.append(f"device {device}")
    return " · ".join(parts)


def check(condition: bool, claim: str) -> None:
    """Guard a claim the text makes about an output.

    Under the test suite (``COMPANION_CHECKS=strict``, which ``make test`` sets) a claim that
    no longer holds fails the chapter. In a reader's run, where another device, thread count or
    library version can move a trained number a little, it only warns: the run goes on.
    """
    if condition:
        return
    if os.environ.get("COMPANION_CHECKS", "").strip().lower() == "strict":
        raise AssertionError(f"the text claims: {claim}")
    warnings.warn(f"your run differs from the book's: the text says {claim}", stacklevel=2)
