import os
import subprocess
import sys
from pathlib import Path

import pytest

import companion  # noqa: F401  (configures the environment on import)
from companion.env import companion_home, hf_home


def _env_after_import(extra: dict) -> dict:
    code = ("import os, json, companion; print(json.dumps({k: os.environ.get(k) for k in "
            "['HF_HUB_OFFLINE', 'HF_HOME', 'HF_DATASETS_OFFLINE']}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COMPANION_"))}
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout)


def test_offline_by_default(tmp_path):
    seen = _env_after_import({"COMPANION_HOME": str(tmp_path)})
    assert seen["HF_HUB_OFFLINE"] == "1"
    assert seen["HF_DATASETS_OFFLINE"] == "1"
    assert seen["HF_HOME"] == str(tmp_path / "hf")


def test_online_changes_nothing(tmp_path):
    seen = _env_after_import({"COMPANION_HOME": str(tmp_path), "COMPANION_ONLINE": "1"})
    assert seen == {"HF_HUB_OFFLINE": None, "HF_HOME": None, "HF_DATASETS_OFFLINE": None}


def test_home_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("COMPANION_HOME", raising=False)
    assert companion_home() == Path("~/.cache/llms-from-zero").expanduser()
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    assert hf_home() == tmp_path / "hf"


def test_importing_after_transformers_warns(tmp_path):
    code = "import transformers, warnings\nimport companion\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COMPANION_"))}
    env["COMPANION_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True)
    assert "put `import companion` first" in out.stderr


def test_an_empty_home_is_an_error_not_the_current_folder(monkeypatch):
    for empty in ("", "  "):
        monkeypatch.setenv("COMPANION_HOME", empty)
        with pytest.raises(ValueError, match="COMPANION_HOME is set but empty.*unset it"):
            companion_home()
        with pytest.raises(ValueError, match="COMPANION_HOME is set but empty"):
            hf_home()


def test_only_torchaos_import_noise_is_dropped(caplog):
    import logging

    from companion.env import quiet_torchao_import

    quiet_torchao_import()
    quiet_torchao_import()  # twice: one filter per logger
    assert logging.getLogger("torchao").filters.count(companion.env._keep_record) == 1
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.so: no CUDA")
        logging.getLogger("torch.utils._pytree").warning(
            "<enum 'E'> is an Enum subclass ... Calling register_constant() on Enum subclasses is "
            "deprecated and will be an error in a future release.")
        logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_other.so")
        logging.getLogger("torch.utils._pytree").warning("another warning")
    assert [r.getMessage() for r in caplog.records] == [
        "Failed to load /x/torchao/_C_other.so", "another warning"]


def test_loading_a_model_prints_no_torchao_noise():
    code = ("import companion\nfrom transformers import AutoModelForCausalLM\n"
            "AutoModelForCausalLM.from_pretrained('HuggingFaceTB/SmolLM2-135M-Instruct')\n"
            "import sys; assert 'torchao' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Failed to load" not in out.stderr and "register_constant" not in out.stderr, out.stderr
