"""Shared fixtures of the companion tests."""

import pytest
import torch

from helpers import deprecations_from_companion


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine stalls two-thread kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def movie_reviews():
    """The movie-review corpus (train, validation, test), loaded once per test module."""
    from companion.corpora import load_movie_reviews

    return load_movie_reviews()


@pytest.fixture(autouse=True)
def no_deprecated_calls_from_companion():
    """Fail a test when code in `companion` calls an API its library has deprecated.

    A DeprecationWarning or FutureWarning whose stack passes through `companion/` is an error,
    wherever the library attributes it: the next deprecation is caught here, not by a reader.
    """
    with deprecations_from_companion() as caught:
        yield
    if caught:
        pytest.fail("companion calls a deprecated API:\n" + "\n".join(caught), pytrace=False)
