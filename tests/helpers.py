"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

import contextlib
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

import companion

COMPANION_DIR = Path(companion.__file__).resolve().parent


def perturbed(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every weight (LayerNorms and biases too) so a misplaced one shows; eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _companion_frame(stack: list[traceback.FrameSummary]) -> traceback.FrameSummary | None:
    """The innermost frame of the stack that lies in the companion package, if any."""
    inside = [f for f in stack if Path(f.filename).resolve().is_relative_to(COMPANION_DIR)]
    return inside[-1] if inside else None


@contextlib.contextmanager
def deprecations_from_companion() -> Iterator[list[str]]:
    """Collect every Deprecation/FutureWarning raised while a companion function is on the stack.

    Other warnings are passed on unchanged (pytest still reports them).
    """
    caught: list[str] = []
    previous = warnings.showwarning

    def hook(message, category, filename, lineno, file=None, line=None):
        frame = None
        if issubclass(category, (DeprecationWarning, FutureWarning)):
            frame = _companion_frame(traceback.extract_stack()[:-1])
        if frame is None:
            previous(message, category, filename, lineno, file, line)
        else:
            caught.append(f"{category.__name__}: {message} (from {frame.filename}:{frame.lineno})")

    with warnings.catch_warnings():
        warnings.simplefilter("always", DeprecationWarning)
        warnings.simplefilter("always", FutureWarning)
        warnings.showwarning = hook
        yield caught

