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
from dataclasses import dataclass
from pathlib import Path

import companion  # noqa: I001 - first: offline Hugging Face cache
import torch
import torch.nn.functional as F
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
    """The file's text; without a path (or "pydoc") the standard library's pydoc topics (about 465 KB);
    "reviews" for the book's movie reviews (Pang & Lee, train and validation reviews)."""
    if path in (None, "pydoc"):
        import pydoc_data.topics

        return "\n\n".join(pydoc_data.topics.topics.values()), "pydoc_data.topics (Python stdlib)"
    if path == "reviews":
        from companion.corpora import load_movie_reviews

        reviews = load_movie_reviews()
        docs = [t for split in ("train", "validation") for t in reviews[split]["text"]]  # test: never
        return "\n\n".join(docs), "movie reviews (companion.corpora.load_movie_reviews)"
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


# ----------------------------------------------------------------------------- recipes side by side

@dataclass(frozen=True)
class ClmRecipe:
    """How a small GPT is pre-trained: its windows, batch and optimiser schedule."""

    name: str
    block: int
    batch: int
    lr: float
    warmup: int
    betas: tuple[float, float] = (0.9, 0.95)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    nanogpt: bool = False  # nanoGPT's loop (random windows) instead of companion.training.train


# nanoGPT's documented CPU run ("baby GPT", README "I only have a macbook"): 4 layers, 4 heads, width
# 128, block 64, batch 12, lr 1e-3 (100 warm-up steps, cosine to 1e-4), AdamW betas (0.9, 0.99),
# weight decay 0.1, no dropout; windows drawn at random positions of the training text.
NANOGPT_BABY = ClmRecipe("nanoGPT baby", block=64, batch=12, lr=1e-3, warmup=100, betas=(0.9, 0.99),
                         nanogpt=True)
# The book's default for short runs: the trainer's windows (every block/2 tokens, shuffled epochs), a
# higher peak lr than nanoGPT's and its batch of 12 x 64: in a few minutes, steps count more than
# long windows (blocks of 128 x 16 were 0.26 nats/char worse than the baby after 60 CPU-s on pydoc).
BOOK = ClmRecipe("book", block=64, batch=12, lr=3e-3, warmup=100)


def nanogpt_lr(it: int, recipe: ClmRecipe, steps: int) -> float:
    """nanoGPT's get_lr: linear warm-up to lr, cosine decay to min_lr at the last step."""
    if it < recipe.warmup:
        return recipe.lr * (it + 1) / (recipe.warmup + 1)
    ratio = min(1.0, (it - recipe.warmup) / max(1, steps - recipe.warmup))
    low = recipe.lr * recipe.min_lr_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (recipe.lr - low)


def nanogpt_train(model: torch.nn.Module, ids: torch.Tensor, recipe: ClmRecipe, steps: int,
                  seed: int) -> None:
    """nanoGPT's training loop: random windows, decay on 2-D weights, clipping at 1."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=recipe.lr, betas=recipe.betas)
    model.train()
    for it in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = nanogpt_lr(it, recipe, steps)
        starts = torch.randint(len(ids) - recipe.block, (recipe.batch,), generator=generator)
        x = torch.stack([ids[i:i + recipe.block] for i in starts])
        y = torch.stack([ids[i + 1:i + 1 + recipe.block] for i in starts])
        logits = model(x).logits
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def book_train(model: torch.nn.Module, ids: torch.Tensor, recipe: ClmRecipe, steps: int,
               seed: int) -> None:
    """companion.training.train on windows of `block` tokens every block/2 tokens."""
    train(model, Blocks(ids, recipe.block, recipe.block // 2), steps=steps, lr=recipe.lr,
          batch_size=recipe.batch, warmup=min(recipe.warmup, steps // 10),
          weight_decay=recipe.weight_decay, seed=seed, progress=False)


def timed(fit, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fit(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def window_loss(model: torch.nn.Module, ids: torch.Tensor, block: int) -> float:
    """Mean next-token cross-entropy over non-overlapping windows of `block` inputs (nats per token)."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(ids) - block - 1, 64 * block):
        chunk = ids[i:i + 64 * block + 1]
        rows = (len(chunk) - 1) // block
        x = chunk[:rows * block].view(rows, block)
        y = chunk[1:rows * block + 1].view(rows, block)
        logits = model(x).logits
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        n += y.numel()
    return total / n


def race(recipes: list[ClmRecipe], train_ids: torch.Tensor, val_ids: torch.Tensor, vocab: int,
         budget: float, seed: int, args: argparse.Namespace) -> list[dict]:
    """Each recipe trained for `budget` CPU-seconds of this process (the steps that a timed calibration
    predicts), then scored on the same validation windows (those of the shortest block)."""
    eval_block = min(r.block for r in recipes)
    rows = []
    for recipe in recipes:
        fit = nanogpt_train if recipe.nanogpt else book_train
        sizes = argparse.Namespace(**{**vars(args), "block": recipe.block})
        fit(make_model("gpt", vocab, sizes, seed), train_ids, recipe, 3, seed)  # lazy initialisation
        # CPU time per step: the difference of a short and a longer run cancels the set-up time
        n = args.calibration_steps
        short, long = (timed(fit, make_model("gpt", vocab, sizes, seed), train_ids, recipe, k, seed)[1]
                       for k in (10, 10 + n))
        per_step = (long - short) / n
        steps = max(recipe.warmup + 10, round(budget / per_step))
        model = make_model("gpt", vocab, sizes, seed)
        wall, cpu = timed(fit, model, train_ids, recipe, steps, seed)
        tokens = steps * recipe.batch * recipe.block
        rows.append({"recipe": recipe.name, "seed": seed, "steps": steps, "cpu_s": cpu, "wall_s": wall,
                     "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
                     "epochs": tokens / len(train_ids), "val_loss": window_loss(model, val_ids, eval_block)})
    return rows


def race_main(args: argparse.Namespace) -> None:
    """Print the book's recipe and nanoGPT's baby recipe side by side on each corpus, and the ratios."""
    recipes = [BOOK, NANOGPT_BABY]
    print(f"{torch.get_num_threads()} threads; budget {args.budget:.0f} CPU-seconds of this process per run; "
          + "; ".join(f"{r.name}: block {r.block}, batch {r.batch}, lr {r.lr:g}, warm-up {r.warmup}, "
                      f"betas {r.betas}" for r in recipes))
    for corpus in args.race or ["pydoc", "reviews"]:
        text, source = read_text(corpus)
        ids, vocab = encode(text, "char")
        cut = int(len(ids) * (1 - args.val_fraction))
        print(f"\n{source}: {len(ids):,} characters, vocabulary {vocab}; validation: the last "
              f"{len(ids) - cut:,}, in windows of {min(r.block for r in recipes)}")
        rows = []
        for seed in args.seeds:
            for row in race(recipes, ids[:cut], ids[cut:], vocab, args.budget, seed, args):
                rows.append(row)
                print(f"  {row['recipe']:>13} seed {seed}: {row['steps']:5d} steps, {row['epochs']:.2f} epochs, "
                      f"{row['cpu_s']:.0f} CPU-s, {row['wall_s']:.0f} s, {row['tokens_per_s']:,.0f} tokens/s "
                      f"({row['tokens_per_cpu_s']:,.0f} per CPU-s); validation loss {row['val_loss']:.4f}",
                      flush=True)
        loss = {r.name: [row["val_loss"] for row in rows if row["recipe"] == r.name] for r in recipes}
        for name, values in loss.items():
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            print(f"  {name:>13}: validation loss {statistics.mean(values):.4f} ± {spread:.4f} nats per "
                  f"character over {len(values)} seeds")
        ratios = [b / a for a, b in zip(loss[BOOK.name], loss[NANOGPT_BABY.name])]
        print(f"  nanoGPT baby / book, validation loss: {statistics.mean(ratios):.3f} (per seed "
              + ", ".join(f"{r:.3f}" for r in ratios) + "; above 1: the book's recipe is better)")


def main() -> None:
    """Parse the flags, compare trainer and bare loop, then train for the budget and report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("text", nargs="?", help="a UTF-8 text file (default: the stdlib's pydoc topics)")
    p.add_argument("--level", choices=["byte", "char"], default="byte")
    p.add_argument("--budget", type=float, default=120.0, help="seconds of training in the main run")
    p.add_argument("--model", choices=["gpt", "hf-gpt2"], default="gpt",
                   help="companion.gpt.GPT or transformers' GPT2LMHeadModel")
    p.add_argument("--block", type=int, default=BOOK.block)
    p.add_argument("--batch", type=int, default=BOOK.batch)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--lr", type=float, default=BOOK.lr)
    p.add_argument("--warmup", type=int, default=BOOK.warmup)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--eval-batches", type=int, default=None, help="cap on validation batches (default: all)")
    p.add_argument("--compare-steps", type=int, default=30, help="steps per timing run of the comparison")
    p.add_argument("--rounds", type=int, default=3, help="alternating trainer/bare timing rounds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: companion's, 2)")
    p.add_argument("--race", nargs="*", metavar="CORPUS",
                   help="instead: the book's recipe against nanoGPT's baby recipe at equal CPU time on "
                        "these corpora (default: pydoc reviews), character level, for --budget each")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--race: the seeds")
    p.add_argument("--calibration-steps", type=int, default=40, help="--race: steps timed to size a run")
    args = p.parse_args()

    device = companion.setup(threads=args.threads)
    if args.race is not None:
        return race_main(args)
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
