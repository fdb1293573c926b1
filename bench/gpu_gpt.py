"""Training speed of a GPT-2-124M-size model on the device at hand: tokens/s and MFU.

The recipe is nanoGPT's for one GPU: bf16 autocast, fused AdamW, flash attention through
``F.scaled_dot_product_attention(is_causal=True)``, ``torch.compile`` and TF32 matrix multiplies.
The data are random tokens from a fixed seed: the benchmark measures speed, not learning.

The model is a minimal GPT-2 written here (about 60 lines), not ``companion.gpt.GPT``: the book's
GPT builds an explicit mask in every layer (it supports padding and a KV cache), and PyTorch's
flash kernel takes no mask, only ``is_causal=True``. The architecture is the same (learned
positions, pre-LayerNorm blocks, GELU MLP, output layer tied to the token embedding).

MFU is tokens/s x FLOPs per token / a peak *measured* here (``companion.scale.matmul_peak``, a
square matrix multiply in the training dtype), not a datasheet's figure.

    python bench/gpu_gpt.py                        # GPT-2 124M on a GPU; a 2-layer model on a CPU
    python bench/gpu_gpt.py --no-compile --steps 10 --batch 8
    python bench/gpu_gpt.py --dtype fp32 --grad-accum 4
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

import companion  # noqa: I001 - first: offline Hugging Face cache
import torch
import torch.nn.functional as F
from torch import nn

from companion.device import pick_device
from companion.scale import flops_per_token, matmul_peak, median_seconds, mfu
from companion.seeding import seed_everything, set_threads

GPT2_VOCAB = 50257  # GPT-2's byte-level BPE: 50,000 merges + 256 bytes + <|endoftext|>


def pad_vocab(vocab: int, multiple: int = 64) -> int:
    """`vocab` rounded up to a multiple of `multiple` (GPT-2's 50257 -> 50304, nanoGPT's size)."""
    if vocab < 1 or multiple < 1:
        raise ValueError(f"vocab and multiple must be >= 1, got {vocab} and {multiple}")
    return -(-vocab // multiple) * multiple


@dataclass(frozen=True)
class Config:
    """Sizes of the benchmark's GPT: the defaults are GPT-2 124M with nanoGPT's padded vocabulary."""

    vocab: int = pad_vocab(GPT2_VOCAB)
    n_ctx: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768

    def __post_init__(self) -> None:
        if min(self.vocab, self.n_ctx, self.n_layer, self.n_head, self.d_model) < 1:
            raise ValueError(f"every size must be >= 1, got {self}")
        if self.d_model % self.n_head:
            raise ValueError(f"width {self.d_model} is not divisible by {self.n_head} heads: "
                             "pick --heads that divides --width")


class Block(nn.Module):
    """Pre-LayerNorm block: x + attention(ln(x)), then x + MLP(ln(x)); causal flash attention."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.attn_proj = nn.Linear(c.d_model, c.d_model)
        self.fc = nn.Linear(c.d_model, 4 * c.d_model)
        self.mlp_proj = nn.Linear(4 * c.d_model, c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(self.ln_1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # no mask tensor: flash kernel
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class BenchGPT(nn.Module):
    """GPT-2: token + position embeddings, blocks, final LayerNorm, output layer tied to the embedding."""

    def __init__(self, c: Config) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(c.vocab, c.d_model), nn.Embedding(c.n_ctx, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:  # residual projections scaled down by depth
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of `targets` (already shifted) given `ids`."""
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # float32 under autocast

    def non_embedding_parameters(self) -> int:
        """Parameters outside the token and position embeddings (the tied output layer is the former)."""
        return sum(p.numel() for p in self.parameters()) - self.wte.weight.numel() - self.wpe.weight.numel()


@dataclass(frozen=True)
class Result:
    """What one benchmark run measured (memory only on CUDA)."""

    device: str
    dtype: str
    parameters: int
    non_embedding_parameters: int
    tokens_per_step: int
    step_seconds: float
    tokens_per_second: float
    peak_flops: float
    mfu: float  # 6 N + 12 L T d per token, N = the matrix weights, tied output layer included
    mean_loss: float
    peak_memory_bytes: int | None


CPU_DEFAULTS = dict(layers=2, width=128, heads=4, seq=128, batch=8, steps=5, warmup_steps=2)
GPU_DEFAULTS = dict(layers=12, width=768, heads=12, seq=1024, batch=16, steps=30, warmup_steps=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line flags; sizes left unset are filled in by device in `main`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best present)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                   help="autocast bf16 or plain float32 (default: bf16 on CUDA, fp32 elsewhere)")
    p.add_argument("--steps", type=int, help="timed steps (default: 30 on CUDA, 5 elsewhere)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps first; compilation happens here")
    p.add_argument("--batch", type=int, help="sequences per micro-batch (default: 16 on CUDA, 8 elsewhere)")
    p.add_argument("--seq", type=int, help="tokens per sequence and context (default: 1024 on CUDA, 128)")
    p.add_argument("--layers", type=int, help="default: 12 on CUDA, 2 elsewhere")
    p.add_argument("--width", type=int, help="d_model (default: 768 on CUDA, 128 elsewhere)")
    p.add_argument("--heads", type=int, help="default: 12 on CUDA, 4 elsewhere")
    p.add_argument("--vocab", type=int, default=GPT2_VOCAB,
                   help="token ids drawn below this; the embedding is padded to a multiple of 64")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--peak-size", type=int, help="matrix size of the peak measurement (4096 on CUDA, 1024)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: companion's, 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "seq", "layers", "width", "heads", "vocab", "grad_accum", "peak_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    return args


def main(argv: list[str] | None = None) -> Result:
    """Build the model on the device, train on random tokens, print and return speed and MFU."""
    args = parse_args(argv)
    set_threads(args.threads)
    seed_everything(args.seed, deterministic=False)  # deterministic kernels would slow the GPU down
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    for name, value in (GPU_DEFAULTS if cuda else CPU_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    dtype_name = args.dtype or ("bf16" if cuda else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    if cuda and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bfloat16: pass --dtype fp32")
    if cuda:  # TF32 for the float32 matmuls left (and for all of them with --dtype fp32).
        # Not the new torch.backends.cuda.matmul.fp32_precision alone: it leaves the legacy flag
        # behind, and torch.get_float32_matmul_precision(), which inductor calls, then raises.
        torch.set_float32_matmul_precision("high")

    config = Config(pad_vocab(args.vocab), args.seq, args.layers, args.heads, args.width)
    model = BenchGPT(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    n_body = model.non_embedding_parameters()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=6e-4, betas=(0.9, 0.95), fused=cuda or None)
    forward = torch.compile(model) if args.compile else model
    gen = torch.Generator(device=device).manual_seed(args.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    losses: list[torch.Tensor] = []

    def step() -> None:
        loss_sum = torch.zeros((), device=device)
        for _ in range(args.grad_accum):
            tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device, generator=gen)
            with autocast:
                loss = forward(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()) / args.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum)  # a tensor: no host sync inside the timed step

    name = torch.cuda.get_device_name(device) if cuda else device.type
    tokens_per_step = args.batch * args.seq * args.grad_accum
    print(f"device: {device} ({name}), {torch.get_num_threads()} CPU threads; dtype {dtype_name}"
          f"{' autocast' if dtype == torch.bfloat16 else ''}; compile {'on' if args.compile else 'off'}; "
          f"AdamW{' fused' if cuda else ' (not fused)'}")
    print(f"model: {args.layers} layers, {args.heads} heads, width {args.width}, context {args.seq}, "
          f"vocabulary {config.vocab} (ids < {args.vocab}); {n_params:,} parameters, "
          f"{n_body:,} without embeddings")
    print(f"tokens/step: {tokens_per_step:,} ({args.batch} x {args.seq} x {args.grad_accum} micro-batches); "
          f"{args.warmup_steps} untimed warm-up steps, {args.steps} timed")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, repeats=args.steps, warmup=args.warmup_steps, device=device)
    memory = torch.cuda.max_memory_allocated(device) if cuda else None
    mean_loss = statistics.fmean(float(x) for x in losses[-args.steps:])

    peak_size = args.peak_size or (4096 if cuda else 1024)
    peak = matmul_peak(size=peak_size, dtype=dtype, device=device)
    # N: every parameter but the position embedding (a lookup); the token embedding counts as the
    # output layer it is tied to, as companion.scale and nanoGPT count it.
    per_token = flops_per_token(n_body + model.wte.weight.numel(), n_layer=args.layers,
                                n_ctx=args.seq, d_model=args.width)
    rate = tokens_per_step / seconds
    result = Result(str(device), dtype_name, n_params, n_body, tokens_per_step, seconds, rate, peak,
                    mfu(rate, per_token, peak), mean_loss, memory)
    print(f"median step: {seconds * 1e3:,.1f} ms; {rate:,.0f} tokens/s; mean loss of the timed steps "
          f"{mean_loss:.3f} (random tokens: ln {args.vocab} = {math.log(args.vocab):.3f} is the floor)")
    print(f"measured peak: {peak / 1e12:,.3f} TFLOP/s ({dtype_name} matmul of "
          f"{peak_size}^2 on this device; no datasheet figure is used)")
    print(f"MFU: {result.mfu:.1%} (6N + 12LTd = {per_token / 1e6:,.1f} MFLOP/token, N with the tied "
          "output layer, without the position embedding)")
    if memory is not None:
        print(f"peak memory: {memory / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)")
    return result


if __name__ == "__main__":
    main()
