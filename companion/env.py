"""Where the book keeps its files, and the offline/online switch for the Hugging Face libraries.

Offline (the default) the hub is never contacted: ``HF_HOME`` points at the book's own cache,
where ``python -m companion.resources install`` has placed every model under its hub name, so
``AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")`` works with no network.
Online (``COMPANION_ONLINE=1``) nothing is changed and the same call downloads from the hub.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_online() -> bool:
    """True when the reader asked for the hub with ``COMPANION_ONLINE=1``."""
    return os.environ.get("COMPANION_ONLINE", "0").strip().lower() in {"1", "true", "yes"}


def companion_home() -> Path:
    """The book's cache folder: ``$COMPANION_HOME``, else ``~/.cache/llms-from-zero``."""
    home = os.environ.get("COMPANION_HOME")
    if home is None:
        return Path("~/.cache/llms-from-zero").expanduser()
    if not home.strip():
        raise ValueError("COMPANION_HOME is set but empty, which would put the book's cache in the current "
                         "folder: unset it (for ~/.cache/llms-from-zero) or set it to a folder")
    return Path(home).expanduser()


def hf_home() -> Path:
    """The Hugging Face cache the book uses offline."""
    return companion_home() / "hf"


def configure_hugging_face() -> None:
    """Set the Hugging Face environment variables; must run before `huggingface_hub` is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if is_online():
        return
    already_imported = "huggingface_hub" in sys.modules
    wanted = {name: "1" for name in _OFFLINE_VARIABLES} | {"HF_HOME": str(hf_home())}
    changed = [name for name, value in wanted.items() if os.environ.get(name) != value]
    os.environ.update(wanted)
    if already_imported and changed:
        warnings.warn(
            "companion was imported after huggingface_hub/transformers, so the offline cache may "
            "not be used: restart the kernel and put `import companion` first.",
            stacklevel=3,
        )


# torchao, which transformers imports whenever it loads a model, logs at import time that its
# CUDA-only kernels cannot be loaded, and torch then logs that torchao uses a deprecated pytree
# call: nothing a reader can act on, in every chapter. Only those records are dropped.
_TORCHAO_NOISE = {
    "torchao": ("Failed to load", ("_C_mxfp8", "_C_cutlass")),
    "torch.utils._pytree": ("register_constant() on Enum subclasses is deprecated", ("",)),
}


def _keep_record(record: logging.LogRecord) -> bool:
    """False for the import-time log records of torchao on a machine without its CUDA kernels."""
    phrase, parts = _TORCHAO_NOISE.get(record.name, ("", ()))
    message = record.getMessage()
    return not (phrase in message and any(part in message for part in parts))


def quiet_torchao_import() -> None:
    """Drop torchao's import-time log records about CUDA kernels and a torch deprecation."""
    for name in _TORCHAO_NOISE:
        logger = logging.getLogger(name)
        if _keep_record not in logger.filters:
            logger.addFilter(_keep_record)
