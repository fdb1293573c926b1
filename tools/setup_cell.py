"""Write the set-up cells that open every chapter, from one template.

    .venv/bin/python tools/setup_cell.py book/attention.ipynb [more.ipynb ...]
    .venv/bin/python tools/setup_cell.py --check book/*.ipynb     # exit 1 if any is stale
    .venv/bin/python tools/setup_cell.py --check --root COPY COPY/book/attention.ipynb  # a copy

Each chapter starts with its title, then two cells tagged ``book-setup`` that this tool owns:
a link that opens the chapter in Colab, and a code cell that, where the book's package is not
installed (Colab, or a notebook downloaded on its own), installs it and the data and models
the chapter lists in its metadata (``metadata.book.resources``), then sets up ``companion``
and prints the versions the page was made with. The repository's address is read from
``_config.yml`` (``repository.url``) and the release from ``pyproject.toml``, so publishing the
book elsewhere is a change of that one line followed by a run of this tool.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "book-setup"


class SetupCellError(ValueError):
    """A notebook or the book's configuration does not allow writing the set-up cells."""

CODE = '''\
# Set-up. In Colab, or in a notebook downloaded on its own, this installs the book's
# package and the data this chapter needs (once per runtime, a few minutes). In a
# checkout of the book set up with `make setup`, it only imports the package.
import importlib.util
import subprocess
import sys

{source}
{resources}
if importlib.util.find_spec("companion") is None:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"llms-from-zero @ {{SOURCE}}"], check=True)
    if RESOURCES:  # `install` with no names would fetch every resource of the book
        data = [sys.executable, "-m", "companion.resources", "install"]
        subprocess.run([*data, *RESOURCES], check=True)
    importlib.invalidate_caches()

import companion  # first: it points Hugging Face at the book's offline cache

device = companion.setup()  # threads, seeds, print precision, plot style, quiet logs
print(companion.versions(device))'''

LINK = ("[Open this chapter in Colab]({colab}) · it runs there as it is, "
        "or on your own machine after `make setup` (see the preface).")


def repository_url() -> str:
    """`repository.url` of _config.yml, without a trailing slash."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8")) or {}
    url = (config.get("repository") or {}).get("url")
    if not isinstance(url, str) or not url.strip():
        raise SetupCellError("_config.yml has no repository.url: the set-up cells need it")
    return url.strip().rstrip("/")


def release() -> str:
    """The git tag of this version of the book: v + the version in pyproject.toml's [project]."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = re.search(r"^\[project\]\s*\n(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    match = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.MULTILINE)
    if not match:
        raise SetupCellError("pyproject.toml has no [project] version: the set-up cells need it")
    return "v" + match.group(1)


def _assignment(name: str, value: str, parts: list[str], brackets: str = "()") -> str:
    """`name = value` on one line if it fits in 88 characters, else `parts` one a line."""
    line = f"{name} = {value}"
    if len(line) <= 88 or len(parts) < 2:
        return line
    return f"{name} = {brackets[0]}\n" + "".join(f"    {part}\n" for part in parts) + brackets[1]


def setup_cells(path: Path, resources: list[str], *, root: Path = ROOT) -> list[nbformat.NotebookNode]:
    """The two cells for one chapter: the Colab link and the set-up code.

    `root` is the folder the notebook's path in the Colab link is relative to: the repository
    root, or the folder of a copy of the book (``--root``).
    """
    url, tag = repository_url(), release()
    archive = f"/archive/refs/tags/{tag}.zip"
    source = _assignment("SOURCE", json.dumps(url + archive), [json.dumps(url), json.dumps(archive)])
    names = _assignment("RESOURCES", json.dumps(resources), [json.dumps(r) + "," for r in resources],
                        "[]")
    code = nbformat.v4.new_code_cell(CODE.format(source=source, resources=names))
    code.metadata["tags"] = [TAG]
    cells = [code]
    if url.startswith("https://github.com/"):
        try:
            relative = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise SetupCellError(f"{path} is not inside {root}: the Colab link needs the notebook's "
                                 "path in the repository (pass --root FOLDER for a copy of the book)") from None
        repository = url[len("https://github.com/"):]
        colab = f"https://colab.research.google.com/github/{repository}/blob/{tag}/{relative}"
        link = nbformat.v4.new_markdown_cell(LINK.format(colab=colab))
        link.metadata["tags"] = [TAG]
        cells.insert(0, link)
    return cells


def resources_of(nb: nbformat.NotebookNode, path: Path) -> list[str]:
    """The chapter's `metadata.book.resources`: a list of resource names (may be empty)."""
    resources = nb.metadata.get("book", {}).get("resources", [])
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise SetupCellError(f"{path}: metadata.book.resources must be a list of resource names, "
                             f"got {resources!r}")
    return list(resources)


def _same(a: nbformat.NotebookNode, b: nbformat.NotebookNode) -> bool:
    return a.cell_type == b.cell_type and a.source == b.source


def _is_title(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "markdown" and cell.source.lstrip().startswith("# ")


def update(path: Path, *, check_only: bool = False, root: Path = ROOT) -> bool:
    """Put fresh set-up cells after the title; True if the notebook was (or would be) changed."""
    nb = nbformat.read(path, as_version=4)
    wanted = setup_cells(path, resources_of(nb, path), root=root)
    old = [c for c in nb.cells if TAG in c.metadata.get("tags", [])]
    rest = [c for c in nb.cells if TAG not in c.metadata.get("tags", [])]
    if len(old) == len(wanted) and all(_same(a, b) for a, b in zip(old, wanted)) \
            and nb.cells[1:1 + len(old)] == old and rest and _is_title(rest[0]):
        return False
    if check_only:
        return True
    if not rest or not _is_title(rest[0]):
        raise SetupCellError(f"{path}: the first cell must be the chapter's title (a markdown cell "
                         "starting with '# '); the set-up cells go right after it")
    outputs = {c.cell_type: c for c in old}
    for cell in wanted:  # keep the stored output of an unchanged cell
        if cell.cell_type == "code" and "code" in outputs and outputs["code"].source == cell.source:
            cell.outputs, cell.execution_count = outputs["code"].outputs, outputs["code"].execution_count
    nb.cells = rest[:1] + wanted + rest[1:]
    nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is stale")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="folder the notebooks' paths in the Colab links are relative to (default: "
                             "this repository; pass the folder of a copy of the book to check the copy)")
    args = parser.parse_args(argv)
    try:
        stale = [p for p in args.notebooks if update(p, check_only=args.check, root=args.root)]
    except SetupCellError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for p in stale:
        print(f"{p}: {'set-up cells are stale (run tools/setup_cell.py)' if args.check else 'updated'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
