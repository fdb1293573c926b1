"""Test-suite guard: with --book, every notebook of _toc.yml must be collected by nbval."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))

from toc import toc_notebooks  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--book", action="store_true",
                     help="fail unless nbval collects every notebook listed in _toc.yml")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes tens of seconds; in the default run, "
                                       "deselect with -m 'not slow'")


def pytest_collection_finish(session):
    if not session.config.getoption("--book"):
        return
    if not session.config.getoption("nbval", default=False):
        raise pytest.UsageError("--book needs --nbval: the chapters are tested by nbval")
    collected = {Path(str(item.fspath)).resolve() for item in session.items
                 if str(item.fspath).endswith(".ipynb")}
    missing = [str(nb) for nb in toc_notebooks() if (ROOT / nb).resolve() not in collected]
    if missing:
        raise pytest.UsageError("these notebooks of _toc.yml were not collected by nbval: "
                                + ", ".join(missing))
