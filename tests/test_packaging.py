"""The installable package (what Colab gets from `pip install`) carries every file the repository ships."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_tracked_file_of_companion(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "companion"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0 or not tracked.stdout:
        import pytest

        pytest.skip("not a git checkout: nothing to compare the wheel with")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--quiet", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in tracked.stdout.split() if f not in names]
    assert not missing, f"{len(missing)} shipped files are not package data (pyproject.toml): {missing[:5]}"
