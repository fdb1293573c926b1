"""The test suite's guard against deprecated calls from companion catches them, and only them."""

import warnings

import pytest

import companion.book
from helpers import deprecations_from_companion


def test_a_deprecation_raised_inside_a_companion_call_is_caught(monkeypatch):
    def warn_from_library():  # stands for a library function that companion calls
        warnings.warn("old API", FutureWarning, stacklevel=2)

    monkeypatch.setattr(companion.book, "quiet_libraries", warn_from_library)
    with deprecations_from_companion() as caught:
        companion.book.setup()
    assert len(caught) == 1 and "old API" in caught[0] and "book.py" in caught[0]


def test_a_deprecation_outside_companion_is_passed_on():
    with deprecations_from_companion() as caught, pytest.warns(DeprecationWarning):
        warnings.warn("not ours", DeprecationWarning)
    assert caught == []
