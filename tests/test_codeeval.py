"""companion.codeeval: the sandbox contains what generated code may do; HumanEval; pass@k."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from companion import codeeval


def test_a_correct_program_passes_and_a_failing_one_fails():
    assert codeeval.run_sandboxed("assert sum(range(4)) == 6").status == "passed"
    outcome = codeeval.run_sandboxed("assert 1 == 2, 'not equal'")
    assert (outcome.status, outcome.detail) == ("failed", "AssertionError: not equal")
    assert codeeval.run_sandboxed("import sys; sys.exit(3)").detail == "exit status 3"
    assert codeeval.run_sandboxed("def f(:").detail.startswith("SyntaxError")


def test_an_infinite_loop_is_killed_with_its_children():
    outcome = codeeval.run_sandboxed("while True:\n    pass", timeout=0.5)
    assert outcome.status == "timeout"
    assert outcome.seconds < 5


def test_a_huge_allocation_is_contained():
    outcome = codeeval.run_sandboxed("x = bytearray(4 * 1024 ** 3)", memory_mb=256)
    assert outcome.status == "memory"


def test_writing_outside_its_folder_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for program in (f"open({str(target)!r}, 'w').write('x')",
                    f"import os; os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
                    f"open('../{target.name}', 'a')",
                    f"import os; os.remove({str(Path(__file__))!r})"):
        outcome = codeeval.run_sandboxed(program)
        assert outcome.status == "blocked", (program, outcome)
    assert not target.exists()
    assert Path(__file__).exists()
    # its own folder is writable, within the file-size limit
    assert codeeval.run_sandboxed("open('a.txt', 'w').write('x'); assert open('a.txt').read() == 'x'").passed
    big = codeeval.run_sandboxed("open('big', 'wb').write(b'0' * (3 << 20))", file_mb=1)
    assert big.status == "failed" and "File too large" in big.detail


@pytest.mark.parametrize("program", [
    "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)",
    "import urllib.request; urllib.request.urlopen('http://example.com', timeout=1)",
    "import subprocess; subprocess.run(['true'])",
    "import os; os.system('true')",
    "import os; os.fork()",
    "import ctypes; ctypes.CDLL(None)",
    "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
])
def test_network_processes_and_native_code_are_refused(program):
    outcome = codeeval.run_sandboxed(program)
    assert outcome.status == "blocked", outcome
    assert codeeval.BLOCKED in outcome.detail


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="Python source"):
        codeeval.run_sandboxed(b"print(1)")
    with pytest.raises(ValueError, match="timeout"):
        codeeval.run_sandboxed("pass", timeout=0)
    with pytest.raises(ValueError, match="2 problems but 1 completions"):
        codeeval.check_completions([{}, {}], ["x"])


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail():
    problems = codeeval.load_humaneval()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    canonical = codeeval.check_completions(problems, [p["canonical_solution"] for p in problems])
    assert [o.status for o in canonical] == ["passed"] * 164
    empty = codeeval.check_completions(problems, ["    pass\n"] * 164)
    assert not any(o.passed for o in empty)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of all k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_the_brute_force_count(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert codeeval.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_special_cases():
    assert codeeval.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share of correct samples
    assert codeeval.pass_at_k(200, 0, 100) == 0.0
    assert codeeval.pass_at_k(200, 1, 200) == 1.0
    # the stable product agrees with the binomial formula where the latter still fits in a float
    assert codeeval.pass_at_k(100, 7, 10) == pytest.approx(1 - math.comb(93, 10) / math.comb(100, 10))
    assert codeeval.mean_pass_at_k([[True, False], [False, False]], k=1) == pytest.approx(0.25)
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            codeeval.pass_at_k(*bad)
    with pytest.raises(ValueError):
        codeeval.mean_pass_at_k([], k=1)


def test_a_refusal_the_program_catches_is_still_reported():
    program = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
               "except PermissionError:\n    pass\nraise ValueError('gave up')")
    outcome = codeeval.run_sandboxed(program)
    assert outcome.status == "blocked", outcome
    assert outcome.detail.startswith("sandbox refused socket.") and "ValueError: gave up" in outcome.detail
    # a message that only mentions the sandbox is an ordinary failure
    fake = codeeval.run_sandboxed("raise RuntimeError('sandbox refused nothing')")
    assert fake.status == "failed", fake
