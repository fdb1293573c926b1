import pytest
import torch

import companion
from companion import device as device_module
from companion.device import Precision, autocast, pick_device, precision_for


def test_cpu_only_machine_picks_cpu(monkeypatch):
    monkeypatch.delenv("COMPANION_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_cuda_wins_over_mps(monkeypatch):
    monkeypatch.delenv("COMPANION_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert pick_device() == torch.device("cuda")


def test_mps_wins_over_cpu(monkeypatch):
    monkeypatch.delenv("COMPANION_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert pick_device() == torch.device("mps")


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("COMPANION_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_unknown_device_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("COMPANION_DEVICE", raising=False)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_asking_for_a_missing_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COMPANION_DEVICE", "cuda:0")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        pick_device()


def test_precision_per_device(monkeypatch):
    assert precision_for("cpu") == Precision(None, use_grad_scaler=False)
    assert precision_for("cpu").accelerate_name == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision_for("cuda") == Precision(torch.bfloat16, use_grad_scaler=False)
    assert precision_for("cuda").accelerate_name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision_for("cuda") == Precision(torch.float16, use_grad_scaler=True)
    assert precision_for("cuda").accelerate_name == "fp16"
    assert precision_for("mps").use_grad_scaler


def test_autocast_on_cpu_is_float32():
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu"):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.float32


def test_autocast_with_bfloat16_precision_on_cpu_changes_dtype():
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu", Precision(torch.bfloat16, use_grad_scaler=False)):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16


def test_setup_returns_the_device_and_fixes_threads(monkeypatch):
    monkeypatch.setenv("COMPANION_DEVICE", "cpu")
    assert companion.setup(threads=1) == torch.device("cpu")
    assert torch.get_num_threads() == 1
    companion.set_threads(2)
