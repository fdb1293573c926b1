import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from companion.plotting import cjk_font_name, use_book_style  # noqa: E402


def test_a_cjk_font_is_available():
    assert cjk_font_name() is not None


def test_chinese_labels_render_without_missing_glyphs(tmp_path):
    use_book_style()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        fig, ax = plt.subplots()
        ax.bar(["我", "爱", "自然", "语言", "处理"], [1, 2, 3, 4, 5])
        ax.set_title("注意力 attention −1")
        fig.savefig(tmp_path / "plot.png")
    plt.close(fig)
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_style_sets_readable_defaults():
    use_book_style()
    assert tuple(matplotlib.rcParams["figure.figsize"]) == (6.4, 3.6)
    assert matplotlib.rcParams["axes.unicode_minus"] is False
