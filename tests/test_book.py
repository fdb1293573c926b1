"""The book's own promises: every page of _toc.yml exists, every chapter is stored with outputs
and follows the conventions of CONTRIBUTING.md (set-up cells, nbval tags, hidden checks, no
test machinery in the text, hidden solutions, 88-character code lines, glossary links).

These tests read the stored files only; nbval executes the chapters. A failure names the
notebook, the cell (counted from 0, as `nb.cells[i]`) and what to do.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import setup_cell  # noqa: E402
from toc import toc_entries, toc_notebooks  # noqa: E402

NOTEBOOKS = toc_notebooks(ROOT)
PAGES = [p for p in toc_entries(ROOT) if p.suffix == ".md"]
# Folders of a developer machine (spelled in pieces so this file does not contain them itself).
MACHINE_PATHS = re.compile("|".join(["/" + "work/", "/" + "root/", r"/home/[a-z]", r"/tmp/tmp", "site-packages/"]))

MAX_LINE = 88
SOLUTIONS = re.compile(r"^#+ .*Solutions", re.MULTILINE)
CHECK_TAG = "remove-cell"  # hidden from the site, still executed by nbval
SOLUTION_CODE_TAGS = {"hide-cell", "hide-input", "remove-cell"}
NBVAL_COMMENT = re.compile(r"^\s*#\s*(NBVAL_\w+|PYTEST_VALIDATE_\w+)", re.MULTILINE)
# What a reader must not see: each pattern with what it is.
REMARKS = [
    (re.compile(r"machines? (?:that|which) (?:stored|made|ran|executed)", re.I),
     "a remark about the machine that stored the chapter"),
    (re.compile(r"\b(?:stored|made|executed|ran) this (?:chapter|page|notebook)", re.I),
     "a remark about the run that stored the chapter"),
    (re.compile(r"when this (?:chapter|page|notebook) was (?:stored|made|executed|run)", re.I),
     "a remark about the run that stored the chapter"),
    (re.compile(r"\bshared(?:, busy)? machine", re.I), "a remark about the machine that stored the chapter"),
    (re.compile(r"\btests/"), "a path of the test suite"),
    (re.compile(r"\bnbval\b|NBVAL_", re.I), "nbval, the test machinery"),
    (re.compile(r"\basserted\b", re.I), "an '(asserted: ...)' note"),
    (re.compile(r"\b(?:TODO|FIXME|XXX)\b"), "an author's note"),
    (re.compile(r"\btools/\w+\.py|\bmake notebooks\b|\bstore_outputs\b"), "an author's instruction"),
]


# --------------------------------------------------------------------------- helpers


def load(path: Path) -> dict:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


def text(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def fail(path: Path, problems: list[tuple[int | None, str]], todo: str) -> None:
    """Fail with one line per problem (cell index first) and what to do."""
    lines = [f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}"]
    lines += [f"  {'page' if i is None else f'cell {i}'}: {what}" for i, what in problems]
    lines.append(f"What to do: {todo}")
    pytest.fail("\n".join(lines), pytrace=False)


def solutions_start(cells: list[dict]) -> int | None:
    """Index of the markdown cell with the `## Solutions` heading."""
    return next((i for i, c in enumerate(cells)
                 if c["cell_type"] == "markdown" and SOLUTIONS.search(text(c))), None)


def python_of(source: str) -> str:
    """The cell as plain Python: IPython magics and shell escapes turned into calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def checks_in(source: str) -> list[tuple[int, str]]:
    """(line, what) for each `assert` statement and `companion.check(...)` call of a cell."""
    try:
        tree = ast.parse(python_of(source))
    except SyntaxError:  # not Python: fall back on the lines
        return [(n, "assert") for n, line in enumerate(source.splitlines(), 1)
                if re.match(r"\s*assert\b", line)]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            found.append((node.lineno, "assert"))
        elif isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "check"
                    and isinstance(func.value, ast.Name) and func.value.id == "companion"):
                found.append((node.lineno, "companion.check(...)"))
    return sorted(found)


@cache
def glossary() -> dict[str, list[str]]:
    """Every name of every entry of book/glossary.md (lower-cased) -> the names of its entry."""
    names: dict[str, list[str]] = {}
    inside, entry = False, None
    for line in (ROOT / "book" / "glossary.md").read_text(encoding="utf-8").splitlines():
        if re.match(r"^(`{3,}|:{3,})\{glossary\}", line):
            inside, entry = True, None
            continue
        if inside and re.match(r"^(`{3,}|:{3,})\s*$", line):
            inside = False
        if not inside:
            continue
        if line.strip() and not line[0].isspace() and not line.startswith(":"):
            if entry is None:
                entry = []
            entry.append(line.strip())
            for name in entry:
                names[name.lower()] = entry
        else:
            entry = None
    return names


TERM_ROLE = re.compile(r"\{term\}`(?:[^`<]*<([^`>]+)>|([^`]+))`")


def term_targets(markdown: str) -> list[str]:
    return [(a or b).strip() for a, b in TERM_ROLE.findall(markdown)]


def _is_cjk(name: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in name)


def _mention_pattern(name: str) -> re.Pattern:
    """A glossary name as a word in prose: plurals count; a name with a capital (BPE, LoRA,
    Transformer, Unigram) matches its case, a lower-case name (token) any case."""
    flags = 0 if name != name.lower() else re.I
    return re.compile(r"(?<![\w-])" + re.escape(name) + r"(?:s|es)?(?![\w-])", flags)


def prose(markdown: str) -> str:
    """Markdown without code, math, link targets and {term} roles: what a reader reads as words."""
    markdown = re.sub(r"^(`{3,}|~{3,}).*?^\1", " ", markdown, flags=re.MULTILINE | re.DOTALL)
    markdown = TERM_ROLE.sub(" ", markdown)
    markdown = re.sub(r"`[^`]*`", " ", markdown)
    markdown = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", " ", markdown, flags=re.DOTALL)
    markdown = re.sub(r"\]\([^)]*\)", "]", markdown)
    return re.sub(r"https?://\S+", " ", markdown)


@cache
def registry() -> dict:
    from companion.resources import REGISTRY

    return REGISTRY


@cache
def corpus_loaders() -> dict[str, set[str]]:
    """Each function of companion/corpora.py -> the resource names it reads (through its calls too)."""
    tree = ast.parse((ROOT / "companion" / "corpora.py").read_text(encoding="utf-8"))
    keys = set(registry())
    direct, calls = {}, {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            direct[node.name] = {n.value for n in ast.walk(node)
                                 if isinstance(n, ast.Constant) and n.value in keys}
            calls[node.name] = {n.func.id for n in ast.walk(node)
                                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}

    def reads(name: str, seen: frozenset = frozenset()) -> set[str]:
        found = set(direct.get(name, ()))
        for callee in calls.get(name, set()) - seen - {name}:
            found |= reads(callee, seen | {name})
        return found
    return {name: reads(name) for name in direct if not name.startswith("_")}


def resources_used(cells: list[dict]) -> dict[str, int]:
    """Resource name -> first code cell that uses it: by name in a `resources.*(...)` call, by
    hub name, or through a loader of companion.corpora."""
    # Checkpoints ship inside the package (companion/checkpoints): pip brings them, no install.
    reg = {key: r for key, r in registry().items() if r.kind != "checkpoint"}
    hub = {r.hub_name: key for key, r in reg.items() if r.hub_name}
    loaders = corpus_loaders()
    used: dict[str, int] = {}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = text(cell)
        found = set()
        for args in re.findall(r"resources\.\w+\(([^()]*)\)", source):
            found |= {k for k in re.findall(r"[\"']([\w.-]+)[\"']", args) if k in reg}
        found |= {hub[s] for s in re.findall(r"[\"']([^\"'\s]+)[\"']", source) if s in hub}
        for name in re.findall(r"\b(load_\w+)\(", source):
            found |= loaders.get(name, set())
        for key in found:
            used.setdefault(key, i)
    return used


# --------------------------------------------------------------------------- the table of contents


def test_every_toc_page_exists():
    missing = [str(p) for p in toc_entries(ROOT) if not (ROOT / p).is_file()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"


def test_every_notebook_in_book_is_in_the_toc():
    orphans = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "book").rglob("*.ipynb")
                     if ".ipynb_checkpoints" not in p.parts and p.relative_to(ROOT) not in NOTEBOOKS)
    assert not orphans, f"notebooks no test executes (add them to _toc.yml): {orphans}"


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 2


# --------------------------------------------------------------------------- stored outputs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_notebook_is_stored_with_clean_outputs(path):
    nb = load(path)
    cells = nb["cells"]
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    assert code, f"{path}: a chapter without code"
    problems = []
    first_index, first = code[0]
    if not ("import companion" in text(first) and "companion.setup(" in text(first)):
        problems.append((first_index, "the first code cell must be the set-up cell (`import companion`, "
                                      "`device = companion.setup()`): write it with tools/setup_cell.py"))
    for i, cell in code:
        if not cell.get("execution_count") and "nbval-skip" not in tags(cell):
            problems.append((i, "never executed"))
        for out in cell["outputs"]:
            if out["output_type"] == "error" and "raises-exception" not in tags(cell):
                problems.append((i, f"a stored error: {out.get('ename')}: {out.get('evalue', '')[:100]}"))
            shown = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            if MACHINE_PATHS.search(shown):
                problems.append((i, f"an output shows a path of this machine: {shown[:200]!r}"))
            if out.get("name") == "stderr" and "Warning" in shown:
                problems.append((i, f"a warning is stored in the chapter: {shown[:300]!r}"))
    visible = [(i, c) for i, c in code if CHECK_TAG not in tags(c)]
    if sum(bool(c["outputs"]) for _, c in visible) < len(visible) // 2:
        problems.append((None, "most visible code cells have no stored output"))
    if nb["metadata"].get("kernelspec", {}).get("name") != "python3":
        problems.append((None, "the kernelspec is not python3"))
    if problems:
        fail(path, problems, f"store the outputs again: .venv/bin/python tools/store_outputs.py {path} "
                             "(silence an understood warning at its source; tag a cell that must "
                             "raise `raises-exception`)")


IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")
MIN_ALT = 40
# An alt text that names a file or a path instead of describing the plot.
PATH_ALT = re.compile(r"\.(?:png|svg|jpe?g|gif|pdf)\b|[\w.~-]*/[\w.-]+/[\w./-]*|^\S+$", re.I)
# What tools write when nobody wrote an alt text: a MIME type, matplotlib's repr, a bare word.
DEFAULT_ALT = re.compile(
    r"\bimage/\w+|<Figure size|\boutput_\d+_\d+\b|^\W*(?:an?\s+|the\s+)?(?:png|svg|jpe?g|image|img|"
    r"output|figure|fig|plot|chart|graph|picture|alt(?: text)?)(?:\s*\d+)?\W*$", re.I)


def alt_problem(alt: object) -> str | None:
    """Why `alt` is not alt text that describes a plot, or None when it is."""
    if not isinstance(alt, str) or not alt.strip():
        return "no alt text (cell metadata mystnb.image.alt)"
    alt = alt.strip()
    if DEFAULT_ALT.search(alt):
        return f"the alt text {alt[:80]!r} is a placeholder, not a description"
    if PATH_ALT.search(alt) or MACHINE_PATHS.search(alt):
        return f"the alt text {alt[:80]!r} looks like a file name or path, not a description"
    if len(alt) < MIN_ALT:
        return f"the alt text {alt!r} is {len(alt)} characters, fewer than {MIN_ALT}"
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_every_plot_has_alt_text(path):
    problems = []
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        images = [kind for out in cell.get("outputs", []) for kind in out.get("data", {})
                  if kind in IMAGE_TYPES]
        if not images:
            continue
        image = cell.get("metadata", {}).get("mystnb", {}).get("image", {})
        what = alt_problem(image.get("alt") if isinstance(image, dict) else None)
        if what:
            problems.append((i, f"{len(images)} image output{'s' * (len(images) > 1)}: {what}"))
    if problems:
        fail(path, problems, 'give the cell the metadata `"mystnb": {"image": {"alt": "..."}}`: one '
                             "paragraph saying what kind of plot it is, its axes and units, and what the "
                             "reader should see, with the approximate values shown (MyST-NB gives every "
                             "image of the cell this text, so describe each plot of a cell in it)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_notebook_ends_with_exercises_and_solutions(path):
    nb = load(path)
    markdown = "\n".join(text(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert re.search(r"^#+ .*Exercises", markdown, re.MULTILINE), f"{path}: no Exercises section"
    assert SOLUTIONS.search(markdown), f"{path}: no Solutions section"


# --------------------------------------------------------------------------- 1. set-up cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_chapter_opens_with_title_and_current_setup_cells(path):
    cells = load(path)["cells"]
    problems = []
    if not (cells and cells[0]["cell_type"] == "markdown" and text(cells[0]).lstrip().startswith("# ")):
        problems.append((0, "the first cell must be the chapter's title (markdown starting with '# ')"))
    marked = [i for i, c in enumerate(cells) if setup_cell.TAG in tags(c)]
    if not marked:
        problems.append((1, f"no cells tagged `{setup_cell.TAG}` after the title"))
    elif marked != list(range(1, 1 + len(marked))):
        problems.append((marked[0], f"the `{setup_cell.TAG}` cells {marked} must come right after the title"))
    else:
        setup_code = [i for i in marked if cells[i]["cell_type"] == "code"]
        first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
        if setup_code != [first_code]:
            problems.append((first_code, "the first code cell must be the one set-up code cell"))
    try:
        stale = setup_cell.update(ROOT / path, check_only=True)
    except setup_cell.SetupCellError as error:
        problems.append((None, str(error)))
    else:
        if stale and marked:
            problems.append((marked[0], "the set-up cells differ from what tools/setup_cell.py writes"))
    if problems:
        fail(path, problems, f"run `.venv/bin/python tools/setup_cell.py {path}` (it writes the Colab link and "
                             "the set-up cell after the title), then store the outputs with "
                             f"`.venv/bin/python tools/store_outputs.py {path}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_chapter_lists_the_resources_it_uses(path):
    nb = load(path)
    listed = nb["metadata"].get("book", {}).get("resources")
    if not isinstance(listed, list):
        fail(path, [(None, f"metadata.book.resources is {listed!r}, not a list")],
             'add `"book": {"resources": [...]}` to the notebook metadata: the names (python -m '
             "companion.resources list) of the data sets and models the chapter uses, [] for none; "
             f"then run .venv/bin/python tools/setup_cell.py {path}")
    known = registry()
    problems = [(None, f"metadata.book.resources lists {name!r}, which companion.resources does not know")
                for name in listed if name not in known]
    problems += [(i, f"uses the resource {name!r}, which metadata.book.resources does not list "
                     "(a reader in Colab would not get it)")
                 for name, i in sorted(resources_used(nb["cells"]).items(), key=lambda kv: kv[1])
                 if name not in listed]
    if problems:
        fail(path, problems, "make metadata.book.resources list exactly registered names the chapter "
                             f"needs, then run .venv/bin/python tools/setup_cell.py {path}")


# --------------------------------------------------------------------------- 2. nbval tags


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_nbval_directives_are_cell_tags(path):
    from nbval.plugin import metadata_tags

    problems = []
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            for marker in NBVAL_COMMENT.findall(text(cell)):
                tag = marker.lower().replace("_", "-")
                problems.append((i, f"the comment `# {marker}`: delete it and tag the cell `{tag}`"))
        for tag in sorted(tags(cell)):
            if re.search(r"nbval|raises|exception", tag) and tag not in metadata_tags:
                problems.append((i, f"unknown nbval tag {tag!r} (known: {', '.join(sorted(metadata_tags))})"))
    if problems:
        fail(path, problems, "nbval directives are cell tags (`nbval-ignore-output`, `nbval-skip`, "
                             "`raises-exception`), never comments in the code")


# --------------------------------------------------------------------------- 3. hidden checks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_checks_are_in_hidden_cells(path):
    problems = []
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] != "code" or CHECK_TAG in tags(cell) or setup_cell.TAG in tags(cell):
            continue
        for line, what in checks_in(text(cell)):
            problems.append((i, f"line {line}: `{what}` in a cell the reader sees"))
    if problems:
        fail(path, problems, f"move the checks into a code cell of their own tagged `{CHECK_TAG}` (hidden "
                             "from the site, still run by the tests); a range check of a trained or "
                             "timed number is `companion.check(condition, claim)`")


# --------------------------------------------------------------------------- 4. no test machinery in the text


def remarks(source: str) -> list[str]:
    """One line per line of `source` that holds a REMARKS pattern: what it is, and the line."""
    found: dict[int, str] = {}
    for pattern, what in REMARKS:
        for match in pattern.finditer(source):
            start = source.rfind("\n", 0, match.start()) + 1
            end = source.find("\n", match.end())
            line = source[start:end if end >= 0 else None].strip()
            found.setdefault(start, f"{what}: {line[:120]!r}")
    return [found[start] for start in sorted(found)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_chapter_shows_no_test_machinery(path):
    problems = []
    for i, cell in enumerate(load(path)["cells"]):
        if CHECK_TAG in tags(cell) or cell["cell_type"] not in ("markdown", "code"):
            continue
        source = text(cell)
        if cell["cell_type"] == "code":  # `# NBVAL_...` comments are test_nbval_directives_are_cell_tags'
            source = NBVAL_COMMENT.sub("", source)
        problems += [(i, found) for found in remarks(source)]
    if problems:
        fail(path, problems, "write for the reader: say what the output shows, not which machine stored "
                             "it or what the tests check (checks go in hidden `remove-cell` cells)")


@pytest.mark.parametrize("path", PAGES, ids=str)
def test_page_shows_no_test_machinery(path):
    problems = [(None, found) for found in remarks((ROOT / path).read_text(encoding="utf-8"))]
    if problems:
        fail(path, problems, "write for the reader: no remarks about the machine that stored a page, no "
                             "paths of tests/, no nbval, no notes for authors")


# --------------------------------------------------------------------------- 5. hidden solutions


ADMONITION = re.compile(r"^(?P<fence>`{3,}|:{3,})\{admonition\}\s*(?P<title>.*)$")


def solution_markdown_problems(source: str) -> list[str]:
    """What keeps a markdown cell of the Solutions section from being only headings and dropdowns."""
    problems, lines, n = [], source.splitlines(), 0
    while n < len(lines):
        line = lines[n]
        if not line.strip() or re.match(r"^#+ ", line):
            n += 1
            continue
        opening = ADMONITION.match(line)
        if not opening:
            problems.append(f"text outside a dropdown: {line.strip()[:80]!r}")
            break
        fence, title = opening["fence"], opening["title"].strip()
        if not re.match(r"Solutions? to exercises? ", title):
            problems.append(f"the admonition's title is {title!r}, not 'Solution to exercise N'")
        n += 1
        options = []
        while n < len(lines) and re.match(r"^:[\w-]+:", lines[n]):
            options.append(lines[n])
            n += 1
        if not any(re.match(r"^:class:.*\bdropdown\b", o) for o in options):
            problems.append(f"the admonition {title!r} has no `:class: dropdown` line right after its title")
        while n < len(lines) and lines[n].strip() != fence:
            n += 1
        if n == len(lines):
            problems.append(f"the admonition {title!r} is not closed by {fence}")
        n += 1
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_solutions_are_hidden(path):
    cells = load(path)["cells"]
    start = solutions_start(cells)
    if start is None:
        pytest.skip("no Solutions section (test_notebook_ends_with_exercises_and_solutions fails)")
    problems = []
    for i, cell in enumerate(cells[start:], start):
        if cell["cell_type"] == "markdown":
            body = text(cell)[SOLUTIONS.search(text(cell)).end():] if i == start else text(cell)
            problems += [(i, what) for what in solution_markdown_problems(body)]
        elif cell["cell_type"] == "code" and not tags(cell) & SOLUTION_CODE_TAGS:
            problems.append((i, "a solution's code cell without the tag `hide-cell`"))
    if problems:
        fail(path, problems, "after `## Solutions`, write each solution as a dropdown "
                             "(`:::{admonition} Solution to exercise N` / `:class: dropdown` / ... / `:::`) "
                             "and tag its code cells `hide-cell`")


# --------------------------------------------------------------------------- 6. 88-character lines


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_code_lines_fit_in_88_characters(path):
    problems = []
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        long = [n for n, line in enumerate(text(cell).splitlines(), 1) if len(line) > MAX_LINE]
        if long:
            problems.append((i, f"lines {', '.join(map(str, long))} are longer than {MAX_LINE} characters"))
    if problems:
        fail(path, problems, f"run `ruff format --line-length {MAX_LINE} {path}`, then shorten the comments "
                             "and strings it leaves long")


# --------------------------------------------------------------------------- 7. glossary links


MIN_MENTIONS = 3  # a glossary term a chapter uses this often is linked at least once


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_chapter_links_the_glossary_terms_it_uses(path):
    terms = glossary()
    assert terms, "book/glossary.md defines no terms"
    cells = load(path)["cells"]
    problems, linked = [], set()
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for target in term_targets(text(cell)):
            if target.lower() in terms:
                linked.add(tuple(terms[target.lower()]))
            else:
                problems.append((i, f"{{term}}`{target}` is not an entry of book/glossary.md"))
    entries = {tuple(names) for names in terms.values()} - linked
    names = sorted({(name, entry) for entry in entries for name in entry if not _is_cjk(name)},
                   key=lambda ne: -len(ne[0]))  # longest first: "attention mask" before "attention"
    mentions: dict[tuple, list[int]] = {}
    texts = {i: prose(text(c)) for i, c in enumerate(cells)
             if c["cell_type"] == "markdown" and setup_cell.TAG not in tags(c)}
    for name, entry in names:
        pattern = _mention_pattern(name)
        for i in texts:
            hits = pattern.findall(texts[i])
            mentions.setdefault(entry, []).extend([i] * len(hits))
            texts[i] = pattern.sub(" ", texts[i])
    for entry, where in sorted(mentions.items(), key=lambda kv: min(kv[1], default=0)):
        if len(where) >= MIN_MENTIONS:
            problems.append((min(where), f"'{entry[0]}' is mentioned {len(where)} times and never linked"))
    if problems:
        fail(path, problems, "link each glossary term the chapter uses at its first mention: {term}`token`, "
                             "or {term}`tokens <token>` for another wording; a link must name an entry "
                             "of book/glossary.md")
