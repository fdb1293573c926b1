"""A Llama-style decoder from scratch that runs the real weights of SmolLM2-135M-Instruct.

RMSNorm instead of LayerNorm, rotary positions (RoPE) instead of learned ones, grouped-query
attention (9 query heads share 3 key/value heads), a SwiGLU MLP, no biases, and an output layer
tied to the token embedding. Attention and RoPE are the book's own, from `companion.attention`;
`from_pretrained` copies the weights of Hugging Face's ``LlamaForCausalLM`` name by name, and
``tests/test_llama.py`` checks that both give the same logits and the same greedy tokens.

Usage (downloads nothing: ``import companion`` first points transformers at the offline cache)::

    import companion
    from companion.llama import SMOLLM2, from_pretrained, generate
    from transformers import AutoTokenizer

    model = from_pretrained()                      # SmolLM2-135M-Instruct, float32, eval mode
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    out = generate(model, ids, 30, greedy=True, eos_token_id=tokenizer.eos_token_id,
                   streamer=lambda t: print(tokenizer.decode(t[0]), end="", flush=True))

For a batch, tokenize with ``tokenizer.padding_side = "left"`` and pass ``attention_mask``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import apply_rope, causal_mask, rope_angles, scaled_dot_product_attention
from companion.finetune import SMOLLM2
from companion.generation import check_sampling as _check_sampling
from companion.generation import sample_next_token

__all__ = [
    "SMOLLM2",
    "KVCache",
    "LlamaConfig",
    "LlamaModel",
    "LlamaOutput",
    "from_hf_model",
    "from_pretrained",
    "generate",
    "stream",
]


@dataclass(frozen=True)
class LlamaConfig:
    """Sizes of a Llama-style decoder; `from_hf` reads them from a transformers config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads}): each key/value head serves a whole group")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")

    @classmethod
    def from_hf(cls, hf_config: Any) -> LlamaConfig:
        """The sizes of a transformers ``LlamaConfig``; unsupported variants raise ValueError."""
        rope = getattr(hf_config, "rope_parameters", None) or {}  # transformers >= 5
        theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", None))
        rope_type = rope.get("rope_type", "default")
        scaling = getattr(hf_config, "rope_scaling", None)  # transformers 4
        if rope_type != "default" or (scaling and scaling.get("rope_type", "default") != "default"):
            raise ValueError(f"only plain RoPE is supported, this config uses {rope_type!r} / {scaling!r}")
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise ValueError(f"the MLP uses SiLU, this config asks for {hf_config.hidden_act!r}")
        if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
            raise ValueError("biases in attention or MLP layers are not supported (Llama has none)")
        heads = hf_config.num_attention_heads
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
            rope_theta=float(theta if theta is not None else 10000.0),
            rms_norm_eps=hf_config.rms_norm_eps,
            tie_word_embeddings=hf_config.tie_word_embeddings,
            max_position_embeddings=hf_config.max_position_embeddings,
        )


class KVCache:
    """Keys and values of every layer for the tokens seen so far, (batch, kv_heads, time, head_dim)."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        """Number of positions cached (the offset of the next token), padding columns included."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new keys and values of `layer`; return all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


@dataclass
class LlamaOutput:
    """What `LlamaModel.forward` returns: logits (batch, time, vocab) and the cache it updated."""

    logits: torch.Tensor
    cache: KVCache | None = None


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight: LayerNorm without centring and without a bias."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # the mean of squares in float32, even for half-precision weights
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class SwiGLU(nn.Module):
    """The gated MLP of Llama: down(silu(gate(x)) · up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with RoPE where each key/value head serves num_heads/num_kv_heads queries."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # HF Llama rotates halves (x[i], x[i + d/2]), as apply_rope does: no weight permutation needed.
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # the cache keeps the small, un-repeated kv heads
        group = self.num_heads // self.num_kv_heads  # query heads 0..group-1 share kv head 0, ...
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out, _ = scaled_dot_product_attention(q, k, v, mask=mask)  # (B, heads, T, head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class DecoderLayer(nn.Module):
    """Pre-norm block on the residual stream: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = GroupedQueryAttention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), angles, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(nn.Module):
    """Token embedding, `num_layers` decoder layers, a final RMSNorm and a (tied) output layer."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one matrix: embedding and output layer

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        """An empty cache for `forward(..., cache=...)`."""
        return KVCache(self.config.num_layers)

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> LlamaOutput:
        """Logits for every position of `input_ids` (batch, time); `cache` is updated in place.

        `attention_mask` (batch, past + time) is 1 for real tokens and 0 for (left) padding, which
        is never attended; position ids then count real tokens only, as in Hugging Face's generate.
        """
        if input_ids.ndim != 2 or input_ids.shape[1] == 0 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be integer ids of shape (batch, time) with time >= 1, "
                             f"got {input_ids.dtype} of shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        past = 0 if cache is None else cache.length
        S = past + T
        mask = causal_mask(T, n_keys=S, device=input_ids.device)  # (T, S): the last T of S tokens
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                                 f"{(B, S)} (batch, cached + new tokens)")
            real = attention_mask.bool()
            mask = mask & real[:, None, None, :]  # (B, 1, T, S): padding is never a key
            if position_ids is None:  # RoPE is relative, so this offset changes no score, but it
                # keeps positions below max_position_embeddings however much padding there is
                position_ids = (real.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        if position_ids is None:
            position_ids = torch.arange(past, S, device=input_ids.device)
        if position_ids.shape not in ((T,), (B, T)):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, "
                             f"expected ({T},) or {(B, T)}")
        if int(position_ids.max()) >= self.config.max_position_embeddings:
            raise ValueError(f"position {int(position_ids.max())} is past max_position_embeddings="
                             f"{self.config.max_position_embeddings}: shorten the prompt")
        c = self.config
        angles = rope_angles(position_ids.reshape(-1), c.head_dim, base=c.rope_theta)
        angles = angles.view(*position_ids.shape, -1)  # (T, d/2) or (B, T, d/2)
        if angles.ndim == 3:
            angles = angles[:, None]  # (B, 1, T, d/2): the same angles for every head
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, angles, mask, cache, i)
        return LlamaOutput(self.lm_head(self.norm(x)), cache)


_RENAMES = ((".attn.", ".self_attn."), (".attn_norm.", ".input_layernorm."),
            (".mlp_norm.", ".post_attention_layernorm."))


def _hf_name(name: str) -> str:
    """The transformers ``LlamaForCausalLM`` name of one of our parameters."""
    if name == "lm_head.weight":
        return name
    for ours, theirs in _RENAMES:
        name = name.replace(ours, theirs)
    return "model." + name


@torch.no_grad()
def from_hf_model(hf_model: nn.Module) -> LlamaModel:
    """A `LlamaModel` with a copy of the weights of a transformers ``LlamaForCausalLM`` (eval mode)."""
    config = LlamaConfig.from_hf(hf_model.config)
    theirs = hf_model.state_dict()
    first = next(hf_model.parameters())
    model = LlamaModel(config).to(device=first.device, dtype=first.dtype)  # where and how theirs is
    used = set()
    for name, param in model.named_parameters():  # a tied lm_head is not listed: it is the embedding
        source = _hf_name(name)
        if source not in theirs:
            raise ValueError(f"the transformers model has no {source!r} for our {name!r}")
        if theirs[source].shape != param.shape:
            raise ValueError(f"shape mismatch for {name!r}: ours {tuple(param.shape)}, "
                             f"{source!r} has {tuple(theirs[source].shape)}")
        param.copy_(theirs[source])
        used.add(source)
    left = [n for n in theirs if n not in used and not (n == "lm_head.weight" and config.tie_word_embeddings)
            and not n.endswith("inv_freq")]
    if left:
        raise ValueError(f"weights of the transformers model that we do not use: {left[:5]}")
    return model.eval()


def from_pretrained(name: str = SMOLLM2, *, dtype: torch.dtype = torch.float32) -> LlamaModel:
    """Load `name` with transformers (offline cache after ``import companion``) and copy its weights."""
    from transformers import AutoModelForCausalLM  # `import companion` above chose the offline cache

    hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    return from_hf_model(hf_model)


def _check_prompt(model: LlamaModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  max_new_tokens: int) -> torch.Tensor:
    """Reject bad prompts before any work; return the attention mask as booleans."""
    if input_ids.ndim != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be integer ids of shape (batch, time), got {input_ids.dtype} "
                         f"of shape {tuple(input_ids.shape)}: add a batch dimension with input_ids[None]")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if attention_mask is None:
        real = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                             f"{tuple(input_ids.shape)}: they must match")
        if not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
        real = attention_mask.bool()
        if not real[:, -1].all():
            raise ValueError("padding must be on the left (the last column is padding in some row): "
                             "tokenize with tokenizer.padding_side = 'left'")
        if (real[:, 1:].long() < real[:, :-1].long()).any():
            raise ValueError("attention_mask has a gap (a 0 after a 1): only left padding is supported")
    longest = int(real.sum(-1).max())
    limit = model.config.max_position_embeddings
    if longest + max_new_tokens > limit:
        raise ValueError(f"a prompt of {longest} tokens + {max_new_tokens} new ones is longer than "
                         f"max_position_embeddings={limit}: shorten the prompt or max_new_tokens")
    return real


def stream(model: LlamaModel, input_ids: torch.Tensor, max_new_tokens: int, *,
           attention_mask: torch.Tensor | None = None, greedy: bool = False, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
           generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Each step's new tokens (batch,), yielded as soon as they exist; the arguments of `generate`."""
    _check_sampling(temperature, top_k, top_p, greedy)  # here, not at the first next(): fail early
    real = _check_prompt(model, input_ids, attention_mask, max_new_tokens)
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": greedy,
                "generator": generator}
    return _steps(model, input_ids, real, max_new_tokens, eos_token_id, use_cache, sampling)


@torch.no_grad()  # no_grad wraps generator functions too: it holds at every resumption
def _steps(model: LlamaModel, input_ids: torch.Tensor, real: torch.Tensor, max_new_tokens: int,
           eos_token_id: int | None, use_cache: bool, sampling: dict[str, Any]) -> Iterator[torch.Tensor]:
    """The generation loop behind `stream`: prefill the prompt, then one token per step."""
    if max_new_tokens == 0:
        return
    ids, cache = input_ids, model.new_cache() if use_cache else None
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    logits = model(ids, attention_mask=real, cache=cache).logits[:, -1]
    for step in range(max_new_tokens):
        next_id = sample_next_token(logits, **sampling)
        if eos_token_id is not None:
            next_id = next_id.masked_fill(done, eos_token_id)  # finished rows repeat eos
            done |= next_id == eos_token_id
        yield next_id
        if step == max_new_tokens - 1 or bool(done.all()):
            return
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        real = torch.cat([real, real.new_ones(real.shape[0], 1)], dim=1)
        if use_cache:  # feed only the new token: the cache holds keys and values of the others
            logits = model(next_id[:, None], attention_mask=real, cache=cache).logits[:, -1]
        else:
            logits = model(ids, attention_mask=real).logits[:, -1]


@torch.no_grad()
def generate(model: LlamaModel, input_ids: torch.Tensor, max_new_tokens: int, *,
             attention_mask: torch.Tensor | None = None, greedy: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             streamer: Callable[[torch.Tensor], Any] | Any | None = None) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to each (left-padded) row; return prompt + new ids.

    Rows that produced `eos_token_id` are filled with it, and generation stops when every row
    has. `streamer` is called with each step's tokens (batch,), or is an object with ``put`` and
    ``end`` such as transformers' ``TextStreamer`` (which gets the prompt first, as in HF).
    """
    hf_style = streamer is not None and hasattr(streamer, "put") and hasattr(streamer, "end")
    steps = stream(model, input_ids, max_new_tokens, attention_mask=attention_mask, greedy=greedy,
                   temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id,
                   generator=generator, use_cache=use_cache)
    new = []
    if hf_style:
        streamer.put(input_ids.cpu())
    for next_id in steps:
        new.append(next_id[:, None])
        if hf_style:
            streamer.put(next_id.cpu())
        elif streamer is not None:
            streamer(next_id)
    if hf_style:
        streamer.end()
    return torch.cat([input_ids, *new], dim=1)
