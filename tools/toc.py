"""Print the chapter notebooks listed in _toc.yml, one path a line (used by the Makefile and tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _files(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if key in node:
                found.append(node[key])
        for value in node.values():
            if isinstance(value, (list, dict)):
                found += _files(value)
    elif isinstance(node, list):
        for item in node:
            found += _files(item)
    return found


def toc_entries(root: Path = ROOT) -> list[Path]:
    """Every page of _toc.yml as a path relative to the book root, with its real suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = []
    for name in _files(toc):
        candidates = [root / name, root / f"{name}.ipynb", root / f"{name}.md"]
        path = next((c for c in candidates if c.is_file()), root / name)
        entries.append(path.relative_to(root))
    return entries


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks among the _toc.yml pages."""
    return [p for p in toc_entries(root) if p.suffix == ".ipynb"]


if __name__ == "__main__":
    print("\n".join(str(p) for p in toc_notebooks()))
    sys.exit(0)
