"""The set-up cell that opens every chapter (tools/setup_cell.py): what it writes, its --check,
and a run of a chapter's set-up cell outside a checkout of the book, as in Colab."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "setup_cell.py"
sys.path.insert(0, str(ROOT / "tools"))
import setup_cell  # noqa: E402

CHAPTER = Path("book/history.ipynb")  # a light chapter
VERSIONS_LINE = re.compile(r"^Python \d+\.\d+\.\d+ · torch \S+ · transformers ", re.MULTILINE)
MANY = ["minilm", "smollm2", "book-gpt", "book-bert", "polarity", "movie-reviews", "chinese-reviews"]


def run_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def setup_code(nb: nbformat.NotebookNode) -> str:
    cells = [c for c in nb.cells if c.cell_type == "code" and setup_cell.TAG in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one set-up code cell, found {len(cells)}"
    return cells[0].source


@pytest.fixture
def book_copy(tmp_path) -> Path:
    """tmp/book/<chapter>: a copy of a chapter, with its set-up cells as the tool writes them."""
    copy = tmp_path / CHAPTER
    copy.parent.mkdir(parents=True)
    shutil.copy(ROOT / CHAPTER, copy)
    return copy


# --------------------------------------------------------------------------- what the tool writes


@pytest.mark.parametrize("resources", [[], ["minilm"], MANY], ids=["none", "one", "many"])
def test_setup_cells_fit_in_88_characters_and_name_the_repository(resources):
    url, tag = setup_cell.repository_url(), setup_cell.release()
    link, code = setup_cell.setup_cells(ROOT / CHAPTER, resources)
    assert link.cell_type == "markdown" and code.cell_type == "code"
    too_long = [line for line in code.source.splitlines() if len(line) > 88]
    assert not too_long, f"set-up code lines longer than 88 characters: {too_long}"
    compile(code.source, "set-up cell", "exec")
    namespace: dict = {}
    assignments = code.source[code.source.index("SOURCE ="):code.source.index("if importlib")]
    exec(assignments, namespace)
    assert namespace["SOURCE"] == f"{url}/archive/refs/tags/{tag}.zip"
    assert namespace["RESOURCES"] == resources
    repository = url.removeprefix("https://github.com/")
    assert f"colab.research.google.com/github/{repository}/blob/{tag}/{CHAPTER.as_posix()}" in link.source
    for cell in (link, code):
        assert cell.metadata["tags"] == [setup_cell.TAG]


def test_repository_url_is_read_from_config_only():
    url = setup_cell.repository_url()
    assert re.search(rf"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*{re.escape(url)}/?\s*$",
                     (ROOT / "_config.yml").read_text(), re.MULTILINE), "repository.url of _config.yml"
    tool = TOOL.read_text()
    owner_and_name = url.removeprefix("https://github.com/")
    assert url not in tool and owner_and_name not in tool, \
        "tools/setup_cell.py spells out the repository address: read it from _config.yml"


def test_empty_resources_install_nothing():
    """`python -m companion.resources install` with no names installs every resource of the book."""
    code = setup_cell.setup_cells(ROOT / CHAPTER, [])[1].source
    assert re.search(r"^    if RESOURCES:.*\n(        .*\n)*        subprocess\.run\(\[\*data, \*RESOURCES\]",
                     code, re.MULTILINE), code


# --------------------------------------------------------------------------- --check


def test_check_detects_a_stale_notebook(book_copy, tmp_path, capsys):
    def tool(*args: str) -> int:  # the command line, in this process (a fresh Python takes seconds)
        return setup_cell.main([*args, "--root", str(tmp_path), str(book_copy)])

    assert tool() == 0
    nb = nbformat.read(book_copy, as_version=4)
    assert nb.cells[0].source.startswith("# "), "the title stays first"
    assert [setup_cell.TAG in c.metadata.get("tags", []) for c in nb.cells[:4]] == [False, True, True, False]
    assert tool("--check") == 0
    capsys.readouterr()
    assert tool() == 0 and capsys.readouterr().out == "", "a second run changes nothing"

    nb.cells[2].source = nb.cells[2].source.replace("import companion  #", "import companion as c  #")
    nbformat.write(nb, book_copy)
    assert tool("--check") == 1 and "stale" in capsys.readouterr().out
    assert nbformat.read(book_copy, as_version=4).cells[2].source == nb.cells[2].source, "--check changed it"

    assert tool() == 0 and tool("--check") == 0
    nb = nbformat.read(book_copy, as_version=4)
    nb.metadata.setdefault("book", {})["resources"] = ["minilm"]  # the chapter now needs a model
    nbformat.write(nb, book_copy)
    assert tool("--check") == 1

    nb.cells.insert(1, nbformat.v4.new_markdown_cell("A paragraph before the set-up cells."))
    nbformat.write(nb, book_copy)
    assert tool("--check") == 1, "set-up cells moved down"


def test_a_copy_outside_the_repository_needs_root(book_copy):
    """The command line: a clear error, exit status 2 (1 means stale), no traceback."""
    result = run_tool("--check", str(book_copy))
    assert result.returncode == 2 and "--root" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- outside a checkout


RUNNER = '''\
import importlib.util
import sys

site, packages, cell = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
sys.path.insert(0, site)
sys.path.extend(packages)
for name in ("torch", "transformers", "pip"):
    assert importlib.util.find_spec(name) is not None, f"{name} is not importable"
spec = importlib.util.find_spec("companion")
if spec is not None:
    sys.exit(f"companion is importable before the set-up cell ran: {spec.origin}")
print("companion: not importable", flush=True)
with open(cell, encoding="utf-8") as f:
    code = f.read()
exec(compile(code, "set-up cell", "exec"), {"__name__": "__main__"})
import companion  # noqa: E402

print("companion imported from", companion.__file__)
'''


def source_archive(folder: Path) -> Path:
    """The checkout as GitHub archives a tag: a zip of the files git knows, in one top folder."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    archive = folder / f"{setup_cell.release()}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in filter(None, listed):
            if (ROOT / name).is_file():
                z.write(ROOT / name, f"llms-from-zero-{setup_cell.release()[1:]}/{name}")
    return archive


@pytest.mark.slow
def test_setup_cell_installs_the_book_outside_a_checkout(tmp_path):
    """Run a chapter's set-up cell in an empty folder by a Python that cannot import companion.

    `python -S` skips the .pth files, among them the editable install of companion; the runner
    puts this environment's site-packages (torch, transformers, pip) back on sys.path by hand, and
    an empty `site` folder first, where pip installs (PIP_TARGET). The cell's SOURCE, the
    release archive on GitHub, is replaced by an archive of this checkout; the resources come
    from the book's cache of this machine, where they are installed, so that step only checks.
    """
    from companion.env import companion_home
    from companion.resources import is_installed

    work = tmp_path / "reader"
    site = work / "site"
    site.mkdir(parents=True)
    notebook = work / CHAPTER.name
    shutil.copy(ROOT / CHAPTER, notebook)
    nb = nbformat.read(notebook, as_version=4)
    resources = nb.metadata.get("book", {}).get("resources", [])
    if not resources and is_installed("polarity"):
        # A chapter without resources skips that step: give the copy a small data set (already
        # in the cache) so the step runs too, and the set-up cells the tool writes for it.
        nb.metadata.setdefault("book", {})["resources"] = resources = ["polarity"]
        nbformat.write(nb, notebook)
        setup_cell.update(notebook, root=work)
    elif not any(setup_cell.TAG in c.metadata.get("tags", []) for c in nb.cells):
        # Not converted yet (test_book fails for it): give the copy the cells the tool writes.
        setup_cell.update(notebook, root=work)
    code = setup_code(nbformat.read(notebook, as_version=4))
    archive = source_archive(tmp_path)
    code, n = re.subn(r"^SOURCE = (?:\(\n(?:    .*\n)*\)|.*)$", f"SOURCE = {json.dumps(archive.as_uri())}",
                      code, count=1, flags=re.MULTILINE)
    assert n == 1, f"no SOURCE = ... line in the set-up cell:\n{code}"
    (work / "setup_cell.py").write_text(code, encoding="utf-8")
    (work / "runner.py").write_text(RUNNER, encoding="utf-8")

    packages = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PIP_TARGET", "PYTHON"))}
    env.update(PIP_TARGET=str(site), PIP_NO_DEPS="1", PIP_PROGRESS_BAR="off",
               PYTHONPATH=str(site),  # where the `python -m companion.resources` the cell starts finds it
               PYTHONNOUSERSITE="1", PYTHONIOENCODING="utf-8", COMPANION_HOME=str(companion_home()))
    result = subprocess.run([sys.executable, "-S", "runner.py", str(site), *packages, "setup_cell.py"],
                            cwd=work, env=env, capture_output=True, text=True, encoding="utf-8",
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "companion: not importable" in result.stdout, output
    imported = re.search(r"^companion imported from (.+)$", result.stdout, re.MULTILINE)
    assert imported and Path(imported.group(1)).is_relative_to(site), output
    assert VERSIONS_LINE.search(result.stdout), f"no versions line:\n{output}"
    assert "Warning" not in result.stderr, f"the reader would see a warning:\n{result.stderr}"
    installed = list(site.glob("llms_from_zero-*.dist-info"))
    assert installed and (site / "companion" / "resources.py").is_file(), "pip did not install the package"
    assert sorted(p.name for p in site.iterdir()) == sorted(["companion", installed[0].name]), \
        f"pip installed more than the book's package: {sorted(p.name for p in site.iterdir())}"
    for name in resources:
        assert re.search(rf"^ok\s+{re.escape(name)}$", result.stdout, re.MULTILINE), output
