"""The book's plot style: readable defaults and a font that draws Chinese characters."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib import font_manager


# Fonts tried, in order, for CJK text: the Noto font the resources installer provides, then the
# ones macOS, Windows and Linux desktops usually have.
CJK_FONT_NAMES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "PingFang SC", "Heiti SC",
                  "Microsoft YaHei", "SimHei", "WenQuanYi Micro Hei", "Source Han Sans SC")


_registered: set[Path] = set()  # fonts already added to matplotlib's font manager


def _bundled_cjk_font() -> Path | None:
    """The Noto CJK font of the `cjk-font` resource if it is installed (existence only: cheap)."""
    from companion import resources  # not at the top: `python -m companion.resources` would warn

    path = resources.data_path("cjk-font")
    return path if path.is_file() else None


def cjk_font_name() -> str | None:
    """Name of a font that has Chinese glyphs, registering the bundled one; None if there is none."""
    bundled = _bundled_cjk_font()
    if bundled is not None and bundled not in _registered:
        try:
            font_manager.fontManager.addfont(str(bundled))
            _registered.add(bundled)
        except (OSError, RuntimeError, ValueError):  # a damaged file: verify/install reports and repairs it
            pass
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
