import random

import numpy as np
import pytest
import torch

from companion import approx, seed_everything, set_threads


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_same_seed_same_numbers():
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    assert _draws() == first


def test_other_seed_other_numbers():
    seed_everything(1)
    first = _draws()
    seed_everything(2)
    assert _draws() != first


def test_training_is_reproducible():
    def run():
        seed_everything(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x, y = torch.randn(64, 8), torch.randn(64, 1)
        for _ in range(20):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    assert run() == run()


def test_deterministic_algorithms_are_requested():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be"):
        seed_everything(seed)


def test_threads(monkeypatch):
    assert set_threads(1) == 1
    monkeypatch.setenv("COMPANION_THREADS", "2")
    assert set_threads() == 2
    with pytest.raises(ValueError):
        set_threads(-1)


def test_approx_formats_and_rejects_nan():
    assert approx(1.23456) == "≈1.235"
    assert approx(2, digits=1) == "≈2.0"
    with pytest.raises(ValueError, match="diverged"):
        approx(float("nan"))
