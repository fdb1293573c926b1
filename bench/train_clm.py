"""Train a small causal LM on any text file for a wall-clock budget, with companion.training.

Prints the validation loss (nats per byte or per character) and the trainer's tokens/s, and
measures, side by side in the same run, the trainer's tokens/s against a bare PyTorch loop doing
the same work (same model and initialisation, same data and batch, AdamW, clipping, lr schedule).

    python bench/train_clm.py                     # the stdlib's pydoc topics text, bytes, 120 s
    python bench/train_clm.py my.txt --level char --budget 60 --model hf-gpt2
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import companion  # noqa: I001 - first: offline Hugging Face cache
import torch
from torch.utils.data import DataLoader, Dataset

from companion.training import lr_factor, train


class Blocks(Dataset):
    """Windows of `block` tokens every `stride` tokens; labels = input_ids (the model shifts them)."""

    def __init__(self, ids: torch.Tensor, block: int, stride: int) -> None:
        self.ids, self.block = ids, block
        self.starts = range(0, len(ids) - block + 1, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.ids[self.starts[i]:self.starts[i] + self.block]
        return {"input_ids": x, "labels": x}


def read_text(path: str | None) -> tuple[str, str]:
    """The file's text, or the Python standard library's pydoc topics (about 465 KB) without a path."""
    if path is None:
        import pydoc_data.topics

        return "\n\n".join(pydoc_data.topics.topics.values()), "pydoc_data.topics (Python stdlib)"
    return Path(path).read_text(encoding="utf-8"), path


def encode(text: str, level: str) -> tuple[torch.Tensor, int]:
    """Token ids and vocabulary size: UTF-8 bytes (256) or the text's distinct characters."""
    if level == "byte":
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long), 256
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    return torch.tensor([vocab[c] for c in text], dtype=torch.long), len(vocab)


def unigram_cross_entropy(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab: int) -> float:
    """Validation nats per token of the train set's add-one unigram distribution: a floor to beat."""
    counts = torch.bincount(train_ids, minlength=vocab).double() + 1
    return float(-(counts / counts.sum()).log()[val_ids].mean())


def make_model(kind: str, vocab: int, args: argparse.Namespace, seed: int = 0) -> torch.nn.Module:
    """The same architecture and initialisation every call (4 layers, 4 heads, 128 wide by default)."""
    torch.manual_seed(seed)
    if kind == "gpt":
        from companion.gpt import GPT, GPTConfig

        return GPT(GPTConfig(vocab_size=vocab, block_size=args.block, n_layer=args.layers, n_head=args.heads,
                             n_embd=args.width, dropout=0.0))
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=args.block, n_layer=args.layers,
                                      n_head=args.heads, n_embd=args.width, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))


def bare_loop(model: torch.nn.Module, data: Dataset, steps: int, args: argparse.Namespace,
              device: torch.device) -> float:
    """A plain PyTorch loop with the trainer's work per step; returns tokens/s over its steps."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps=steps, warmup=args.warmup))
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    batches, losses, tokens = iter(loader), [], 0
    start = time.perf_counter()
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device) for k, v in batch.items()}
        tokens += batch["input_ids"].numel()
        with companion.autocast(device):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    assert all(math.isfinite(v) for v in torch.stack(losses).tolist())  # one sync, at the end
    return tokens / (time.perf_counter() - start)


def main() -> None:
    """Parse the flags, compare trainer and bare loop, then train for the budget and report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("text", nargs="?", help="a UTF-8 text file (default: the stdlib's pydoc topics)")
    p.add_argument("--level", choices=["byte", "char"], default="byte")
    p.add_argument("--budget", type=float, default=120.0, help="seconds of training in the main run")
    p.add_argument("--model", choices=["gpt", "hf-gpt2"], default="gpt",
                   help="companion.gpt.GPT or transformers' GPT2LMHeadModel")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--eval-batches", type=int, default=None, help="cap on validation batches (default: all)")
    p.add_argument("--compare-steps", type=int, default=30, help="steps per timing run of the comparison")
    p.add_argument("--rounds", type=int, default=3, help="alternating trainer/bare timing rounds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: companion's, 2)")
    args = p.parse_args()

    device = companion.setup(threads=args.threads)
    text, source = read_text(args.text)
    ids, vocab = encode(text, args.level)
    cut = int(len(ids) * (1 - args.val_fraction))
    train_data = Blocks(ids[:cut], args.block, args.block // 2)
    val_data = Blocks(ids[cut:], args.block, args.block)
    print(f"text: {source}, {len(ids):,} {args.level}s, vocabulary {vocab}; train {len(train_data):,} "
          f"blocks of {args.block} (stride {args.block // 2}), validation {len(val_data):,} blocks")
    n_params = sum(p.numel() for p in make_model(args.model, vocab, args).parameters())
    print(f"model: {args.model}, {n_params:,} parameters; device {device}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}")

    # Trainer vs bare loop, alternating (T B, B T, T B, ...) so that drift in machine load hits both,
    # after a warm-up of each (first calls pay for lazy initialisation).
    # Wall-clock tokens/s is what counts; tokens per CPU-second (this process's CPU time, setup included)
    # is far less disturbed by other programs competing for the cores.
    rates: dict[str, list[tuple[float, float]]] = {"trainer": [], "bare": []}
    bare_loop(make_model(args.model, vocab, args), train_data, 3, args, device)
    train(make_model(args.model, vocab, args), train_data, steps=3, batch_size=args.batch, progress=False)
    tokens = args.compare_steps * args.batch * args.block
    for r in range(args.rounds):
        for who in (("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")):
            model = make_model(args.model, vocab, args)
            cpu = time.process_time()
            if who == "bare":
                rate = bare_loop(model, train_data, args.compare_steps, args, device)
            else:
                rate = train(model, train_data, steps=args.compare_steps, lr=args.lr, batch_size=args.batch,
                             warmup=args.warmup, progress=False).tokens_per_s
            rates[who].append((rate, tokens / (time.process_time() - cpu)))
    for who, runs in rates.items():
        print(f"{who:>7}: tokens/s " + ", ".join(f"{w:,.0f}" for w, _ in runs)
              + "; tokens per CPU-second " + ", ".join(f"{c:,.0f}" for _, c in runs))
    wall, cpu = ([statistics.median(x[i] for x in rates[who]) for who in ("trainer", "bare")] for i in (0, 1))
    print(f"trainer / bare loop, medians of {args.rounds} runs of {args.compare_steps} steps: "
          f"tokens/s {wall[0] / wall[1]:.3f}, tokens per CPU-second {cpu[0] / cpu[1]:.3f}")

    tokens_per_step = args.batch * args.block
    steps = max(10, int(args.budget * wall[0] / tokens_per_step))  # the budget at the comparison's speed
    start = time.perf_counter()
    result = train(make_model(args.model, vocab, args), train_data, eval_data=val_data, steps=steps,
                   lr=args.lr, batch_size=args.batch, warmup=args.warmup, eval_every=(steps + 1) // 2,
                   eval_batches=args.eval_batches, progress=True)
    wall_time = time.perf_counter() - start
    h = result.history.dropna(subset=["eval_loss"])
    seconds, epochs = steps * tokens_per_step / result.tokens_per_s, steps * args.batch / len(train_data)
    print(f"main run: {steps} steps, {steps * tokens_per_step:,} tokens ({epochs:.2f} epochs): {seconds:.1f} s "
          f"of training (budget {args.budget:.0f} s), {wall_time:.1f} s with 2 evaluations and setup")
    print("validation loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in zip(h["step"], h["eval_loss"])))
    final = h["eval_loss"].iloc[-1]
    baseline = unigram_cross_entropy(ids[:cut], ids[cut:], vocab)
    print(f"validation loss: {final:.4f} nats per {args.level} ({final / math.log(2):.3f} bits); "
          f"unigram baseline {baseline:.4f} nats")
    print(f"trainer tokens/s (main run, evaluation excluded): {result.tokens_per_s:,.0f}")

if __name__ == "__main__":
    main()
