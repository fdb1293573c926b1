"""Companion package of the executable book "LLMs from Zero" (从零开始大模型开发与微调).

Import it first in a chapter, before `transformers`: importing it switches the Hugging Face
libraries to the book's offline cache unless ``COMPANION_ONLINE=1`` is set.

>>> import companion
>>> device = companion.setup()          # threads, seeds, print precision, plot style, quiet logs
"""

import warnings as _warnings

from companion import env as _env

_env.configure_hugging_face()
_env.quiet_torchao_import()
# The Hugging Face libraries import tqdm.auto, which warns in a kernel without ipywidgets; the
# book's progress bars are plain text (companion.progress), so that warning says nothing.
_warnings.filterwarnings("ignore", message="IProgress not found")

from companion.book import approx, check, progress, setup, versions  # noqa: E402
from companion.device import Precision, autocast, pick_device, precision_for  # noqa: E402
from companion.plotting import use_book_style  # noqa: E402
from companion.seeding import seed_everything, set_threads  # noqa: E402



def __getattr__(name: str):
    """`companion.resources` on first use (imported eagerly, `python -m companion.resources` warns)."""
    if name == "resources":
        import importlib

        return importlib.import_module("companion.resources")
    raise AttributeError(f"module 'companion' has no attribute {name!r}")


__all__ = [
    "Precision",
    "approx",
    "autocast",
    "check",
    "pick_device",
    "precision_for",
    "progress",
    "seed_everything",
    "set_threads",
    "setup",
    "use_book_style",
    "versions",
]
