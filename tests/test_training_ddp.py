"""Two CPU processes under `accelerate launch` (DDP, gloo) train like one with the same global batch,
whether that one process takes the batch at once or in two micro-batches with gradient accumulation."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ddp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict:
    """The losses of ddp_worker.py launched as two processes (global batch 8), launched once."""
    # `accelerate launch --cpu` alone starts a single process (several need MPI); --multi_gpu starts
    # torchrun, and ACCELERATE_USE_CPU=1 makes the workers use CPU DDP with the gloo backend.
    out = tmp_path_factory.mktemp("ddp") / "two.json"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(Path(__file__).with_name("ddp_worker.py")), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _one(**kwargs) -> dict:
    """ddp_worker.run in this process, leaving the thread count as it was."""
    threads = torch.get_num_threads()
    try:
        return ddp_worker.run(**kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("batch_size, grad_accum", [(8, 1), (4, 2)], ids=["same-batch", "accumulation"])
def test_two_processes_match_one(two, batch_size, grad_accum):
    one = _one(batch_size=batch_size, grad_accum=grad_accum)  # one process, the same global batch of 8
    assert (one["processes"], two["processes"], two["backend"]) == (1, 2, "gloo")
    assert len(two["losses"]) == len(one["losses"]) == 10 and len(two["eval"]) == 2
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    np.testing.assert_allclose(two["eval"], one["eval"], rtol=1e-4)
    assert one["losses"][-1] < one["losses"][0]  # it trained: the comparison is not between two no-ops


def test_accumulation_sees_other_examples_than_a_smaller_batch(two):
    # The check above can fail: half the global batch without accumulation trains on other batches.
    half = _one(batch_size=4, grad_accum=1)
    assert not np.allclose(two["losses"][1:], half["losses"][1:], rtol=1e-4)
