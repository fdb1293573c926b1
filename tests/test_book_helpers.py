"""companion.versions() (the line each chapter's set-up cell prints) and companion.check() (the
claims of a chapter's hidden check cells: strict under the tests, a warning for a reader)."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import warnings
from pathlib import Path

import pytest

import companion

SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"


# --------------------------------------------------------------------------- versions


def test_versions_names_python_and_the_libraries():
    line = companion.versions()
    assert line.startswith(f"Python {platform.python_version()} · ")
    for name in ("torch", "transformers", "peft", "accelerate", "datasets"):
        assert f"{name} {importlib.metadata.version(name)}" in line
    assert "device" not in line and "\n" not in line


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_versions_ends_with_the_device(device):
    assert companion.versions(device).endswith(f" · device {device}")


def test_versions_of_a_missing_library(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "peft":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert " · peft not installed · " in companion.versions()


def test_versions_line_is_masked_by_the_sanitize_file():
    """nbval compares the set-up cell's output after this rule: a newer library is no failure."""
    rules = re.findall(r"^regex: (.+)\nreplace: (.*)$", SANITIZE.read_text(encoding="utf-8"), re.MULTILINE)
    line = companion.versions("cpu")
    masked = line
    for pattern, replacement in rules:
        masked = re.sub(pattern, replacement, masked)
    assert masked == "VERSIONS", f"{line!r} became {masked!r}"


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize("mode", ["strict", "STRICT", " strict\n"])
def test_check_strict_raises_naming_the_claim(monkeypatch, mode):
    monkeypatch.setenv("COMPANION_CHECKS", mode)
    with pytest.raises(AssertionError, match="validation loss below 2.0"):
        companion.check(2.5 < 2.0, "validation loss below 2.0")


@pytest.mark.parametrize("mode", [None, "", "warn", "off"])
def test_check_otherwise_warns_and_returns(monkeypatch, mode):
    if mode is None:
        monkeypatch.delenv("COMPANION_CHECKS", raising=False)
    else:
        monkeypatch.setenv("COMPANION_CHECKS", mode)
    with pytest.warns(UserWarning, match="validation loss below 2.0") as caught:
        result = companion.check(False, "validation loss below 2.0")
    assert result is None
    assert len(caught) == 1
    assert caught[0].filename == __file__, "the warning points at the chapter's line, not at companion"


@pytest.mark.parametrize("mode", [None, "strict", "warn"])
@pytest.mark.parametrize("condition", [True, 1, "non-empty"], ids=["True", "one", "string"])
def test_check_of_a_true_claim_is_silent(monkeypatch, mode, condition):
    if mode is None:
        monkeypatch.delenv("COMPANION_CHECKS", raising=False)
    else:
        monkeypatch.setenv("COMPANION_CHECKS", mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert companion.check(condition, "anything") is None


def test_check_accepts_numpy_and_torch_booleans(monkeypatch):
    import numpy as np
    import torch

    monkeypatch.setenv("COMPANION_CHECKS", "strict")
    companion.check(np.float64(0.5) < 1, "a NumPy comparison")
    companion.check(torch.tensor(0.5) < 1, "a one-element tensor comparison")
    with pytest.raises(AssertionError, match="a tensor claim"):
        companion.check(torch.tensor(1.5) < 1, "a tensor claim")


def test_the_sanitize_file_masks_tqdm_times_and_the_padding_after_them():
    rules = re.findall(r"^regex: (.+)\nreplace: (.*)$", SANITIZE.read_text(encoding="utf-8"), re.MULTILINE)

    def masked(text):
        for pattern, replacement in rules:
            text = re.sub(pattern, replacement, text)
        return text

    short = "embed_std 1: 100%|##| 800/800 [00:45<00:00, 17.61it/s]\n"
    padded = "embed_std 1: 100%|##| 800/800 [01:02<00:00, 12.8it/s]  \n"
    assert masked(short) == masked(padded) == "embed_std 1: 100%|##| 800/800 [TIME]\n"
