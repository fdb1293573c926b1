"""Time per generated token with and without the KV cache, side by side, for a few lengths.

Without a cache every step re-runs the whole context through the model; with it, each step feeds
only the newest token and attends to the stored keys and values. The gap grows with the context.

    python bench/kv_cache.py                  # default: 1 thread, 3 repeats, median reported
    python bench/kv_cache.py --threads 2 --repeats 5

The model is an untrained `companion.gpt.GPT` (4 layers, 128 wide, 512 positions, byte vocab):
only the timing matters, and both ways must produce the same tokens, which the script checks.
Figures are wall-clock times of this machine at the moment of the run: on a shared or busy
machine they are inflated and noisy, so compare the two columns of one run, not runs.
One thread is the default: a batch-1 decoding step is too small to gain from a second one, and
on a busy machine a two-thread kernel keeps waiting for its descheduled partner (measured on
the book's shared 2-core machine: 2 threads were about 10x slower than 1).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import companion
from companion.generation import generate
from companion.gpt import GPT, GPTConfig

CASES = [(32, 32), (128, 64), (384, 128)]  # (prompt tokens, new tokens)


def time_generation(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    """Seconds for one greedy generation and the tokens it produced."""
    start = time.perf_counter()
    out = generate(model, prompt, new_tokens, greedy=True, use_cache=use_cache)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is shown")
    args = parser.parse_args()
    companion.set_threads(args.threads)
    companion.seed_everything(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=512, n_layer=4, n_head=4, n_embd=128)).eval()
    print(f"model: {model.num_parameters():,} parameters, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} runs, greedy decoding, batch 1", flush=True)
    print(f"{'prompt':>6} {'new':>5} {'ms/token cached':>16} {'ms/token uncached':>18} {'speed-up':>9}")
    for prompt_len, new_tokens in CASES:
        prompt = torch.randint(0, 256, (1, prompt_len))
        generate(model, prompt, 2)  # warm up
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for use_cache in (True, False):  # interleaved so both see the same machine load
                seconds, out = time_generation(model, prompt, new_tokens, use_cache)
                times[use_cache].append(seconds / new_tokens * 1e3)
                if use_cache:
                    cached_out = out
                elif not torch.equal(out, cached_out):
                    raise AssertionError("cached and uncached generation disagree")
        cached, uncached = statistics.median(times[True]), statistics.median(times[False])
        print(f"{prompt_len:>6} {new_tokens:>5} {cached:>16.2f} {uncached:>18.2f} {uncached / cached:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
