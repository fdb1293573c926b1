"""The book's plot style: readable defaults and a font that draws Chinese characters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib import font_manager

# Fonts tried, in order, for CJK text: the Noto font the resources installer provides, then the
# ones macOS, Windows and Linux desktops usually have.
CJK_FONT_NAMES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "PingFang SC", "Heiti SC",
                  "Microsoft YaHei", "SimHei", "WenQuanYi Micro Hei", "Source Han Sans SC")


def _bundled_cjk_font() -> Path | None:
    spec = importlib.util.find_spec("mplfonts")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "fonts" / "NotoSansCJKsc-Regular.otf"
    return path if path.exists() else None


def cjk_font_name() -> str | None:
    """Name of a font that has Chinese glyphs, registering the bundled one; None if there is none."""
    bundled = _bundled_cjk_font()
    if bundled is not None:
        font_manager.fontManager.addfont(str(bundled))
    available = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONT_NAMES if name in available), None)


def use_book_style() -> None:
    """Seaborn's whitegrid theme, a compact figure size and a CJK-capable font."""
    sns.set_theme(style="whitegrid", context="notebook")
    cjk = cjk_font_name()
    fonts = ["DejaVu Sans"] + ([cjk] if cjk else [])
    matplotlib.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 100,
        "savefig.bbox": "tight",
        "axes.titlesize": "medium",
        # An explicit list (not the generic "sans-serif") lets matplotlib fall back glyph by glyph.
        "font.family": fonts,
        "axes.unicode_minus": False,
    })


def close_all() -> None:
    """Close every open figure (tests and long notebooks)."""
    plt.close("all")
