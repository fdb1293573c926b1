import json
import re
import shutil

import pytest

from companion import resources
from companion.resources import REGISTRY, ResourceMissing


def test_registry_entries_are_complete():
    for key, r in REGISTRY.items():
        assert r.key == key
        assert r.kind in {"dataset", "model", "checkpoint", "font"}
        if r.kind == "checkpoint":  # shipped in companion/checkpoints, made by companion.recipes
            assert r.pip == "" and {"steps", "tokens", "train_seconds", "device",
                                    "final_validation_loss"} <= set(r.recipe)
        else:
            assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*==[0-9][0-9A-Za-z.]*", r.pip), r.pip
        assert r.licence and r.title and r.files
        for name, digest in r.files.items():
            assert re.fullmatch(r"[0-9a-f]{64}", digest), (key, name)
        if r.kind == "model":
            assert r.hub_name and "/" in r.hub_name and r.convert in {"copy", "gguf"}


def test_the_book_resources_are_installed_and_intact():
    for key in REGISTRY:
        resources.check(key, full=True)


def test_models_are_in_the_cache_under_their_hub_names():
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained("sentence-transformers/all-MiniLM-L6-v2").model_type == "bert"
    assert AutoConfig.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct").model_type == "llama"


def test_missing_data_names_the_resource_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    with pytest.raises(ResourceMissing) as error:
        resources.data_file("polarity")
    message = str(error.value)
    assert "[polarity]" in message and "python -m companion.resources install polarity" in message


def test_missing_model_names_the_resource_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    monkeypatch.delenv("COMPANION_ONLINE", raising=False)
    with pytest.raises(ResourceMissing, match=r"install smollm2"):
        resources.require("smollm2")


def test_online_models_are_not_required_locally(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    monkeypatch.setenv("COMPANION_ONLINE", "1")
    resources.require("smollm2", "minilm")
    with pytest.raises(ResourceMissing):
        resources.require("polarity")  # data always comes from the pip sources


def test_missing_package_file(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "_package_root", lambda r: tmp_path)
    with pytest.raises(ResourceMissing, match=r"\[peoples-daily\].*install peoples-daily"):
        resources.data_file("peoples-daily")


def test_corrupt_data_file_is_detected(monkeypatch, tmp_path):
    name = next(iter(REGISTRY["polarity"].files))
    original = resources.data_file("polarity")
    copy = tmp_path / "data" / name
    copy.parent.mkdir(parents=True)
    shutil.copyfile(original, copy)
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    assert resources.data_file("polarity") == copy
    with open(copy, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ResourceMissing, match="corrupt"):
        resources.data_file("polarity")


def test_corrupt_model_file_is_detected(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    folder = resources.model_dir("minilm")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    resources._write_manifest(REGISTRY["minilm"], folder)
    resources.check("minilm")
    (folder / "config.json").write_text('{"x": 1}')
    with pytest.raises(ResourceMissing, match="corrupt"):
        resources.check("minilm")
    (folder / "config.json").unlink()
    with pytest.raises(ResourceMissing, match="missing"):
        resources.check("minilm")


def test_same_size_tampering_is_caught_by_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    folder = resources.model_dir("minilm")
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("abc")
    resources._write_manifest(REGISTRY["minilm"], folder)
    (folder / "vocab.txt").write_text("abd")  # same size, new mtime
    with pytest.raises(ResourceMissing, match="sha256"):
        resources.check("minilm")


def test_bad_names():
    with pytest.raises(KeyError, match="unknown resource 'nope'"):
        resources.check("nope")
    with pytest.raises(ValueError, match="is a model"):
        resources.data_file("minilm")
    with pytest.raises(ValueError, match="has no file"):
        resources.data_file("polarity", "other.csv")


def test_data_file_by_short_name():
    assert resources.data_file("polarity", "polarity-en-pang&lee2.csv").name == "polarity-en-pang&lee2.csv"


def test_command_line(capsys, monkeypatch, tmp_path):
    assert resources.main(["list"]) == 0
    assert "sentence-transformers/all-MiniLM-L6-v2" in capsys.readouterr().out
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    assert resources.main(["verify", "smollm2"]) == 1
    assert "install smollm2" in capsys.readouterr().err


def test_manifest_records_every_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("bb")
    resources._write_manifest(REGISTRY["minilm"], folder)
    manifest = json.loads((tmp_path / "manifests" / "minilm.json").read_text())
    assert set(manifest["files"]) == {"a.txt", "sub/b.txt"}
    assert manifest["files"]["sub/b.txt"]["size"] == 2
