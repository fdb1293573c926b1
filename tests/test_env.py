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
