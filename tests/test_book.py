"""The book's own promises: every page of _toc.yml exists, every chapter is stored with outputs."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from toc import toc_entries, toc_notebooks  # noqa: E402

NOTEBOOKS = toc_notebooks(ROOT)
# Folders of a developer machine (spelled in pieces so this file does not contain them itself).
MACHINE_PATHS = re.compile("|".join(["/" + "work/", "/" + "root/", r"/home/[a-z]", r"/tmp/tmp", "site-packages/"]))


def test_every_toc_page_exists():
    missing = [str(p) for p in toc_entries(ROOT) if not (ROOT / p).is_file()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"


def test_every_notebook_in_book_is_in_the_toc():
    orphans = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").rglob("*.ipynb")
                     if ".ipynb_checkpoints" not in p.parts and p.relative_to(ROOT) not in NOTEBOOKS)
    assert not orphans, f"notebooks no test executes (add them to _toc.yml): {orphans}"


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_notebook_is_stored_with_clean_outputs(path):
    nb = json.loads((ROOT / path).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a chapter without code"
    assert all(c.get("execution_count") for c in code), "some code cells were never executed"
    assert sum(bool(c["outputs"]) for c in code) >= len(code) // 2, "most cells have no stored output"
    first = "".join(code[0]["source"])
    assert "import companion" in first and "companion.setup(" in first, "the first cell must set up companion"
    for cell in code:
        for out in cell["outputs"]:
            assert out["output_type"] != "error", f"stored error: {out.get('ename')}"
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            assert not MACHINE_PATHS.search(text), f"a stored output shows a path of this machine: {text[:200]}"
            if out.get("name") == "stderr":
                assert "Warning" not in text, f"a warning is stored in the chapter: {text[:300]}"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_notebook_ends_with_exercises_and_solutions(path):
    nb = json.loads((ROOT / path).read_text())
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert re.search(r"^#+ .*Exercises", markdown, re.MULTILINE), "no Exercises section"
    assert re.search(r"^#+ .*Solutions", markdown, re.MULTILINE), "no Solutions section"
