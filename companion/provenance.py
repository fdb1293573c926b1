"""Where a recipe's numbers come from: the machine, library versions and commit of a run, and
per-seed summaries (mean ± sample std), as written into every results.json."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

LIBRARIES = ("torch", "transformers", "peft", "datasets", "numpy")


def seed_summary(values: Sequence[float]) -> dict:
    """{"mean", "std" (sample, ddof=1; 0.0 for one value), "values"} of per-seed numbers."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("seed_summary needs at least one value")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": round(float(np.mean(values)), 6), "std": round(std, 6), "values": values}


def check_run_arguments(seeds: Sequence[int], max_steps: int | None, subset: int | None) -> list[int]:
    """A recipe's seeds as a list, after checking them, max_steps and subset."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has repeats: {seeds}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if subset is not None and subset < 2:
        raise ValueError(f"subset must be at least 2, got {subset}")
    return seeds


def git_commit() -> str | None:
    """HEAD of the book's checkout, marked when tracked files were changed; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        run = dict(cwd=root, capture_output=True, text=True, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, **run).stdout.strip() != ""
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + (" (with uncommitted changes)" if dirty else "")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(device: str | torch.device | None = None) -> dict:
    """Device, threads, processor, library versions, git commit and date of a run."""
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    processor = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return {"device": f"{device} ({processor}, {threads} threads)", "threads": threads,
            "processor": processor,
            "versions": {"python": platform.python_version(),
                         **{name: _version(name) for name in LIBRARIES}},
            "git_commit": git_commit(), "date": datetime.date.today().isoformat()}


def verified_results(folder: Path, key: str) -> dict:
    """`folder`/results.json of recipe `key`, after checking every artifact it lists against its sha256."""
    from companion.resources import sha256

    path = Path(folder) / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"no {path}: run python -m companion.recipes {key}")
    results = json.loads(path.read_text(encoding="utf-8"))
    for name, digest in results.get("artifacts", {}).items():
        if not (folder / name).exists() or sha256(folder / name) != digest:
            raise ValueError(f"{folder / name} is missing or differs from the sha256 in {path}: restore it "
                             f"(git checkout -- {folder}) or rerun python -m companion.recipes {key}")
    return results
