"""Checks of companion/data/milestones.csv, the table of milestone models behind the history chapter."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

CSV = Path(__file__).resolve().parents[1] / "companion" / "data" / "milestones.csv"
COLUMNS = ["year", "model", "organisation", "parameters", "corpus_size", "corpus_unit",
           "tokens_trained", "citation", "source", "notes"]
NUMBERS = ["parameters", "corpus_size", "tokens_trained"]
ARXIV = re.compile(r"arXiv:(\d{2})(\d{2})\.(\d{4,5})\b")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(CSV)


def row(table: pd.DataFrame, model: str) -> pd.Series:
    rows = table[table["model"] == model]
    assert len(rows) == 1, f"expected exactly one row for {model!r}"
    return rows.iloc[0]


def test_columns_and_types(table):
    assert list(table.columns) == COLUMNS
    assert pd.api.types.is_integer_dtype(table["year"])
    for column in NUMBERS:
        assert pd.api.types.is_float_dtype(table[column]) or pd.api.types.is_integer_dtype(table[column])
    for column in ("model", "organisation", "citation"):
        assert table[column].notna().all(), f"empty cell in {column}"
        assert (table[column].str.strip().str.len() > 0).all()


def test_years_increase_within_a_sensible_range(table):
    years = table["year"].tolist()
    assert years == sorted(years), "rows must be ordered by year"
    assert years[0] == 1958 and table["model"].iloc[0] == "Perceptron"
    assert all(1940 <= y <= 2030 for y in years)
    assert len(table) >= 20


def test_models_are_unique(table):
    assert table["model"].is_unique


def test_every_row_cites_a_paper_with_venue_or_arxiv_id(table):
    venue = re.compile(r"(arXiv:\d{4}\.\d{4,5}|\b(19|20)\d\d\b)")
    for _, r in table.iterrows():
        title, sep, where = r["citation"].partition(" — ")
        assert sep and len(title) > 10 and where, f"citation of {r['model']!r} is not 'title — venue'"
        assert venue.search(where), f"citation of {r['model']!r} names no year or arXiv id"


def test_arxiv_ids_agree_with_the_year_and_order(table):
    """An arXiv id YYMM.NNNNN dates the paper: it must match `year`, and order rows within a year."""
    dated = []
    for _, r in table.iterrows():
        match = ARXIV.search(r["citation"])
        if match:
            yy, mm = int(match.group(1)), int(match.group(2))
            assert 1 <= mm <= 12
            assert r["year"] == 2000 + yy, f"{r['model']}: year {r['year']} but arXiv id from 20{yy:02d}"
            dated.append((r["year"], 2000 + yy + (mm - 1) / 12))
    assert len(dated) >= 15
    months = [d for _, d in dated]
    assert months == sorted(months), "rows with arXiv ids must be in order of submission"


def test_numbers_are_positive_whole_and_plausible(table):
    for column, low, high, known in (("parameters", 1e3, 1e13, 12), ("corpus_size", 1e8, 1e14, 8),
                                     ("tokens_trained", 1e8, 1e14, 12)):
        values = table[column].dropna()
        assert len(values) >= known, f"too few known {column}"
        assert ((values >= low) & (values <= high)).all(), f"{column} outside [{low:g}, {high:g}]"
        assert (values == values.round()).all(), f"{column} must be whole numbers"


def test_corpus_size_always_has_its_unit(table):
    """A corpus is counted in words or in tokens, and the unit says which: never a bare number."""
    has_size = table["corpus_size"].notna()
    assert (has_size == table["corpus_unit"].notna()).all(), "corpus_size and corpus_unit go together"
    assert set(table.loc[has_size, "corpus_unit"]) <= {"words", "tokens"}


def test_every_number_has_a_source(table):
    for _, r in table.iterrows():
        for column in NUMBERS:
            if not math.isnan(r[column]):
                assert isinstance(r["source"], str) and len(r["source"]) > 5, f"{r['model']}: source of {column}"
        if isinstance(r["source"], str):
            named = [c for c in ("parameters", "corpus", "tokens trained") if c in r["source"]]
            assert named, f"{r['model']}: the source must say which number it sources"


def test_word_corpora_were_trained_on_more_tokens_than_their_size(table):
    """Where both are known for a word-counted corpus, training went over it more than once:
    the earlier table stored such corpus sizes as if they were the tokens trained on."""
    rows = table[(table["corpus_unit"] == "words") & table["tokens_trained"].notna()]
    assert len(rows) >= 3
    assert (rows["tokens_trained"] > rows["corpus_size"]).all()


def test_every_empty_cell_is_explained(table):
    for _, r in table.iterrows():
        if any(math.isnan(r[column]) for column in NUMBERS):
            assert isinstance(r["notes"], str) and len(r["notes"]) > 20, f"{r['model']}: explain the empty cell"


def test_figures_that_can_be_recomputed(table):
    # LeNet-5's trainable parameters, layer by layer as the paper describes them (5x5 kernels).
    c3_inputs = [3] * 6 + [4] * 9 + [6]  # C3's partial connection table to S2's 6 maps
    lenet5 = (6 * (25 + 1)                       # C1
              + 6 * 2                            # S2: one coefficient and one bias per map
              + sum(n * 25 + 1 for n in c3_inputs)  # C3
              + 16 * 2                           # S4
              + 120 * (16 * 25 + 1)              # C5
              + 84 * (120 + 1))                  # F6
    assert row(table, "LeNet-5")["parameters"] == lenet5 == 60_000
    # seq2seq: 348M French + 304M English words, trained for 7.5 epochs (Sections 3.1 and 3.4).
    seq2seq = row(table, "Seq2seq LSTM")
    assert seq2seq["corpus_size"] == (348 + 304) * 1e6 and seq2seq["corpus_unit"] == "words"
    assert seq2seq["tokens_trained"] == 7.5 * seq2seq["corpus_size"]
    # Transformer (big): 300,000 steps of about 25,000 source + 25,000 target tokens.
    assert row(table, "Transformer (big)")["tokens_trained"] == 300_000 * (25_000 + 25_000)
    # T5's "about 1 trillion": 1M steps x 2^11 sequences x 512 tokens.
    assert row(table, "T5-11B")["tokens_trained"] == pytest.approx(1e6 * 2**11 * 512, rel=0.05)
    # GPT-3: 300B tokens trained on; the mix of Table 2.2 holds 410 + 19 + 12 + 55 + 3 = 499B.
    gpt3 = row(table, "GPT-3")
    assert gpt3["tokens_trained"] == 300e9
    assert gpt3["corpus_size"] == (410 + 19 + 12 + 55 + 3) * 1e9 and gpt3["corpus_unit"] == "tokens"
    # Chinchilla's rule of thumb, about 20 tokens per parameter, holds for Chinchilla itself.
    chinchilla = row(table, "Chinchilla")
    assert chinchilla["tokens_trained"] / chinchilla["parameters"] == pytest.approx(20)
    # BERT: a corpus of 800M + 2,500M words; 1M steps of 256 sequences, 128 tokens long for 90%
    # of them and 512 for the rest (Appendix A.2). Both sizes share corpus and schedule.
    bert_tokens = 1_000_000 * 256 * (0.9 * 128 + 0.1 * 512)
    for name in ("BERT-base", "BERT-large"):
        bert = row(table, name)
        assert bert["corpus_size"] == (800 + 2500) * 1e6 and bert["corpus_unit"] == "words"
        assert bert["tokens_trained"] == pytest.approx(bert_tokens)
        # the paper's "approximately 40 epochs" counts every step at 512 tokens: an upper bound
        assert bert["tokens_trained"] < 1e6 * 256 * 512
    # Qwen2.5's report gives the size of its data (18T tokens), not the tokens trained on.
    qwen = row(table, "Qwen2.5-72B")
    assert qwen["corpus_size"] == 18e12 and math.isnan(qwen["tokens_trained"])


def test_undisclosed_sizes_stay_empty(table):
    gpt4 = row(table, "GPT-4")
    assert all(math.isnan(gpt4[column]) for column in NUMBERS)


def test_the_package_ships_the_table_and_loads_it(table):
    """The chapter reads it through companion, so it runs outside a checkout (Colab) too."""
    from companion.corpora import MILESTONES, load_milestones

    assert MILESTONES.is_relative_to(Path(__import__("companion").__file__).parent)
    pd.testing.assert_frame_equal(load_milestones(), table)
