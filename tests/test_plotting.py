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


def test_the_cjk_font_comes_from_the_registry_not_a_package(monkeypatch, tmp_path):
    from companion import plotting, resources

    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    added = []
    monkeypatch.setattr(plotting.font_manager.fontManager, "addfont", added.append)
    monkeypatch.setattr(plotting, "_registered", set())
    assert plotting._bundled_cjk_font() is None
    use_book_style()  # not installed: falls back to the system fonts, no error
    assert added == []
    font = resources.data_path("cjk-font")
    assert font == tmp_path / "data" / "mplfonts" / "fonts" / "NotoSansCJKsc-Regular.otf"
    font.parent.mkdir(parents=True)
    font.write_bytes(b"font")
    use_book_style()
    use_book_style()
    assert added == [str(font)]  # registered once, never hashed or imported from mplfonts


def test_a_damaged_font_file_falls_back(monkeypatch, tmp_path):
    from companion import plotting, resources

    monkeypatch.setenv("COMPANION_HOME", str(tmp_path))
    monkeypatch.setattr(plotting, "_registered", set())
    font = resources.data_path("cjk-font")
    font.parent.mkdir(parents=True)
    font.write_bytes(b"not a font" * 100)
    use_book_style()
