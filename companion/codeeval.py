"""Functional correctness of generated code: a sandbox for untrusted programs, HumanEval, pass@k.

A generated program is run in a fresh Python process (`run_sandboxed`): isolated mode, no site
packages, its own empty temporary folder as working directory and home, an address-space limit,
a file-size limit, a wall-clock timeout after which its whole process group is killed, and an
audit hook (PEP 578) installed before the program starts that refuses network sockets, new
processes, native libraries (ctypes) and writes outside its folder. That is containment for the
mistakes a language model makes, not a security boundary against a determined attacker: run
untrusted code from the internet in a container or a virtual machine.

>>> from companion import codeeval
>>> codeeval.run_sandboxed("print(1 + 1)").status
'passed'
>>> codeeval.pass_at_k(n=10, c=3, k=1)
0.3
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

STATUSES = ("passed", "failed", "timeout", "memory", "blocked")
BLOCKED = "sandbox refused"  # the start of the message of every PermissionError the audit hook raises

# Runs in the child before the program: installs the audit hook, then executes program.py.
_PRELUDE = r'''
import os, resource, sys
for limit, value in ((resource.RLIMIT_AS, int(sys.argv[1])), (resource.RLIMIT_FSIZE, int(sys.argv[2])),
                     (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
REPORT, REPORTED = int(sys.argv[3]), []  # a pipe to the parent: the first refusal, even if caught
del sys.argv[1:]
FOLDER = os.path.realpath(os.getcwd())
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
REFUSED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork",
           "os.forkpty", "os.kill", "os.killpg", "pty.", "ctypes.", "winreg.", "os.startfile",
           "resource.setrlimit", "resource.prlimit")
CHANGES = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
           "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "os.chdir")

def inside(path):
    if isinstance(path, int):  # a file descriptor the process already holds
        return True
    path = os.fsdecode(path)
    return os.path.realpath(os.path.join(FOLDER, path)).startswith(FOLDER + os.sep)

def refuse(message):
    if not REPORTED:
        REPORTED.append(message)
        try:
            os.write(REPORT, message.encode("utf-8", "replace")[:1000])
        except OSError:  # the program closed the pipe
            pass
    raise PermissionError(message)

def hook(event, args):
    if event.startswith(REFUSED) and event not in ("socket.gethostname", "socket.getservbyname"):
        refuse(f"sandbox refused {event}")
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1] or "", args[2] or 0
        writes = bool(flags & WRITE_FLAGS) or any(c in mode for c in "wax+")
        if writes and path is not None and not inside(path):
            refuse(f"sandbox refused writing {path!r} outside its folder")
    if event in CHANGES and not all(inside(a) for a in args if isinstance(a, (str, bytes))):
        refuse(f"sandbox refused {event} outside its folder")

sys.addaudithook(hook)
del hook
with open("program.py", encoding="utf-8") as f:
    source = f.read()
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class Outcome:
    """What one sandboxed program did: `status` is one of STATUSES; `detail` is its error's last line."""

    status: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def run_sandboxed(program: str, *, timeout: float = 5.0, memory_mb: int = 512,
                  file_mb: int = 10) -> Outcome:
    """Run `program` (Python source) in a contained child process; it passes if it exits with 0.

    Status: "passed", "failed" (an exception or a non-zero exit), "timeout" (killed after
    `timeout` seconds), "memory" (MemoryError under the `memory_mb` limit) or "blocked" (the
    sandbox refused a network call, a new process, ctypes, or a write outside its folder).
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be Python source text (str), got {type(program).__name__}")
    if timeout <= 0 or memory_mb <= 0 or file_mb <= 0:
        raise ValueError(f"timeout, memory_mb and file_mb must be > 0, got {timeout}, {memory_mb}, {file_mb}")
    if sys.platform != "linux":
        raise OSError("run_sandboxed needs Linux (resource limits and process groups); use a Linux "
                      "machine, a container or Colab")
    with tempfile.TemporaryDirectory(prefix="sandbox-") as folder:
        with open(os.path.join(folder, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        start = time.perf_counter()
        report, report_w = os.pipe()
        command = [sys.executable, "-I", "-S", "-c", _PRELUDE, str(memory_mb << 20), str(file_mb << 20),
                   str(report_w)]
        try:
            child = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, pass_fds=(report_w,))
        finally:
            os.close(report_w)  # the child holds its own copy
        try:
            try:
                _, err = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
                return Outcome("timeout", f"killed after {timeout:g} s", time.perf_counter() - start)
            seconds = time.perf_counter() - start
            refusal = os.read(report, 1000).decode("utf-8", "replace")  # the child has exited
        finally:
            os.close(report)
    detail = _last_line(err.decode("utf-8", "replace"))
    if child.returncode == 0:
        return Outcome("passed", "", seconds)
    if detail.startswith("MemoryError"):
        return Outcome("memory", detail, seconds)
    if refusal:  # also when the program caught the refusal and failed in another way
        return Outcome("blocked", detail if BLOCKED in detail else f"{refusal}; then {detail}", seconds)
    if child.returncode < 0:
        detail = detail or f"killed by signal {-child.returncode}"
    return Outcome("failed", detail or f"exit status {child.returncode}", seconds)


# ----------------------------------------------------------------------------- HumanEval

def load_humaneval() -> list[dict]:
    """The 164 HumanEval problems (task_id, prompt, entry_point, canonical_solution, test), in order."""
    from companion.resources import data_file

    with gzip.open(data_file("humaneval"), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_program(problem: dict, completion: str) -> str:
    """The program that tests one completion: prompt + completion, the problem's tests, the call."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def check_completions(problems: Sequence[dict], completions: Sequence[str], *, timeout: float = 5.0,
                      workers: int = 2, progress: bool = False) -> list[Outcome]:
    """Sandboxed outcome of each (problem, completion) pair, in order, `workers` processes at a time."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from tqdm.auto import tqdm

    programs = [check_program(p, c) for p, c in zip(problems, completions)]
    with ThreadPoolExecutor(workers) as pool:
        outcomes = pool.map(lambda program: run_sandboxed(program, timeout=timeout), programs)
        return list(tqdm(outcomes, total=len(programs), desc="testing", disable=not progress))


# ----------------------------------------------------------------------------- pass@k

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c pass (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(passed: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; `passed[i]` holds the outcome of each sample of problem i."""
    if not passed:
        raise ValueError("no problems")
    return float(np.mean([pass_at_k(len(p), int(sum(p)), k) for p in passed]))
