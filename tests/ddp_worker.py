"""Train a tiny GPT-2 for 10 steps and write its losses as JSON (used by test_training_ddp.py).

Under ``accelerate launch --multi_gpu --num_processes 2`` with ``ACCELERATE_USE_CPU=1`` it runs
as two CPU processes (gloo): the global batch is the same as in one process, so the losses must
agree.
"""

import json
import sys

import companion  # noqa: I001 - first, before transformers
import torch
from accelerate import PartialState
from transformers import GPT2Config, GPT2LMHeadModel

from companion.training import train


def run(batch_size: int = 8, grad_accum: int = 1) -> dict:
    """Train 10 steps on a fixed toy data set (global batch 8, eval every 5); return the losses."""
    companion.setup(threads=1)
    config = GPT2Config(vocab_size=256, n_layer=2, n_head=2, n_embd=32, n_positions=16, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 256, (48, 16), generator=generator)]
    result = train(model, data[:40], eval_data=data[40:], steps=10, lr=3e-3, batch_size=batch_size,
                   grad_accum=grad_accum, warmup=2, eval_every=5, progress=False, log_every=5)
    state = PartialState()
    return {"processes": state.num_processes, "backend": state.backend, "losses": result.losses,
            "eval": result.history["eval_loss"].dropna().tolist()}


if __name__ == "__main__":
    out = run()
    if PartialState().is_main_process:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)
