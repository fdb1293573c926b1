"""Where the book keeps its files, and the offline/online switch for the Hugging Face libraries.

Offline (the default) the hub is never contacted: ``HF_HOME`` points at the book's own cache,
where ``python -m companion.resources install`` has placed every model under its hub name, so
``AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")`` works with no network.
Online (``COMPANION_ONLINE=1``) nothing is changed and the same call downloads from the hub.
"""

from __future__ import annotations

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
