"""A GPT-2 style decoder in plain PyTorch, small enough to read in one sitting.

Learned token and position embeddings, pre-LayerNorm blocks (attention + GELU MLP), a final
LayerNorm and an output layer tied to the token embedding: the architecture of Hugging Face's
``GPT2LMHeadModel``, with which ``to_hf_gpt2`` converts it weight for weight. The attention is
``companion.attention.MultiHeadAttention`` with a KV cache.

>>> import torch
>>> from companion.gpt import GPT, GPTConfig
>>> model = GPT(GPTConfig(vocab_size=256))
>>> ids = torch.randint(0, 256, (2, 16))
>>> out = model(ids, labels=ids)            # labels = input_ids: the model shifts them itself
>>> out.logits.shape, out.loss.ndim
(torch.Size([2, 16, 256]), 0)
>>> model.num_parameters()
842496
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import MultiHeadAttention, attention, combine_masks

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (k, v): (batch, head, time, head_dim)


@dataclass
class GPTConfig:
    """Sizes of a GPT; the defaults make a 0.8M-parameter model for a 256-token vocabulary."""

    vocab_size: int
    block_size: int = 128  # longest sequence (number of learned positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


@dataclass
class CausalLMOutput:
    """What `GPT.forward` returns: loss (None without labels), logits, and the KV cache if asked."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    cache: KVCache | None = None


class CausalSelfAttention(MultiHeadAttention):
    """`MultiHeadAttention` where each position sees itself and the positions before it, with a KV cache."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config.n_embd, config.n_head, bias=config.bias, dropout=config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple]:
        """Attend from x's positions to the cached ones and to themselves; return (output, (k, v)).

        padding: (batch, past + time), 1 for real tokens and 0 for padding, or None.
        """
        q, k, v = (self.split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if past is not None:  # the cache holds k and v of every earlier position
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        mask = combine_masks(q.shape[2], k.shape[2], padding=padding, causal=True, device=x.device)
        out, _ = attention(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0,
                           need_weights=False)
        return self.resid_dropout(self.out_proj(self.merge_heads(out))), (k, v)


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4x, GELU (tanh approximation, as GPT-2), project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple]:
        a, kv = self.attn(self.ln_1(x), padding, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class GPT(nn.Module):
    """GPT-2 architecture: token + position embeddings, `n_layer` blocks, LayerNorm, tied output layer."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix, two uses
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("attn.out_proj.weight", "mlp.c_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                use_cache: bool = False) -> CausalLMOutput:
        """Logits for every position; with `labels` (= input_ids, -100 to skip) the next-token loss.

        `attention_mask` (batch, past + time) marks real tokens with 1 and padding with 0;
        `cache` is the cache returned by an earlier call with `use_cache=True`.
        """
        B, T = input_ids.shape
        past_len = 0 if cache is None else cache[0][0].shape[2]
        if past_len + T > self.config.block_size:
            raise ValueError(f"sequence of {past_len + T} tokens is longer than block_size="
                             f"{self.config.block_size}: crop it, e.g. input_ids[:, -block_size:]")
        pos = torch.arange(past_len, past_len + T, device=input_ids.device)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))
        if attention_mask is not None and attention_mask.shape != (B, past_len + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                             f"{(B, past_len + T)} (batch, past + new tokens)")
        new_cache = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, attention_mask, None if cache is None else cache[i])
            new_cache.append(kv)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if labels is not None:  # position t predicts token t + 1: shift inside, as Hugging Face does
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss, logits, tuple(new_cache) if use_cache else None)


def to_hf_gpt2(model: GPT):
    """Copy our GPT into a `transformers.GPT2LMHeadModel` (e.g. to `save_pretrained` it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if not c.bias:
        raise ValueError("GPT2LMHeadModel always has biases: convert a model built with bias=True")
    hf_config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        bos_token_id=c.vocab_size - 1, eos_token_id=c.vocab_size - 1)  # ids inside the vocabulary
    hf = GPT2LMHeadModel(hf_config)
    hf.loss_type = "ForCausalLM"  # its class name matches no loss name: avoid a warning on first loss
    ours = model.state_dict()
    state = {}
    for name, tensor in ours.items():
        if name == "lm_head.weight" or ".attn.k_proj." in name or ".attn.v_proj." in name:
            continue  # lm_head is tied to transformer.wte; k and v go into c_attn with q
        if ".attn.q_proj." in name:  # GPT-2 stacks q, k, v in one c_attn layer
            name = name.replace("q_proj", "c_attn")
            tensor = torch.cat([ours[name.replace("c_attn", p)] for p in ("q_proj", "k_proj", "v_proj")])
        name = name.replace(".attn.out_proj.", ".attn.c_proj.")
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            tensor = tensor.t()  # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)
        state[name] = tensor.detach().clone()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith(".attn.bias")]
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval() if not model.training else hf
