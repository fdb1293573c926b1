"""companion.provenance: the figures every results.json records about its run."""

import math

import pytest

from companion.provenance import environment, git_commit, seed_summary


def test_seed_summary_is_the_mean_and_the_sample_standard_deviation():
    s = seed_summary([0.80, 0.82, 0.84])
    assert s["mean"] == 0.82 and math.isclose(s["std"], 0.02) and s["values"] == [0.80, 0.82, 0.84]
    assert seed_summary([0.5]) == {"mean": 0.5, "std": 0.0, "values": [0.5]}  # one seed: no spread
    with pytest.raises(ValueError, match="at least one value"):
        seed_summary([])


def test_environment_names_the_device_threads_versions_and_commit():
    env = environment("cpu")
    assert env["device"].startswith("cpu (") and f"{env['threads']} threads" in env["device"]
    assert {"torch", "transformers", "peft", "datasets", "numpy", "python"} <= set(env["versions"])
    assert env["git_commit"] == git_commit()
    commit = env["git_commit"]
    assert commit is None or len(commit.split()[0]) == 40
