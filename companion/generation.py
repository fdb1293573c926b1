"""Text generation for `companion.gpt.GPT`: temperature, top-k, top-p, greedy, with a KV cache.

Each step turns the last position's logits into one token with small pure functions that a
chapter can show one by one:

>>> import torch
>>> logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
>>> top_k_filter(logits, 2)
tensor([[2., 1., -inf, -inf]])
>>> top_p_filter(logits, 0.9)                # 0.610 + 0.224 < 0.9, + 0.136 >= 0.9: three kept
tensor([[2.0000, 1.0000, 0.5000,   -inf]])
>>> sample_next_token(logits, greedy=True)
tensor([0])

and `generate` runs the loop: with ``use_cache=True`` each step feeds only the newest token
and reuses the keys and values of the earlier ones (``bench/kv_cache.py`` times the difference).

>>> from companion.gpt import GPT, GPTConfig
>>> model = GPT(GPTConfig(vocab_size=256)).eval()
>>> out = generate(model, torch.tensor([[72, 105]]), 5, greedy=True)
>>> out.shape
torch.Size([1, 7])
"""

from __future__ import annotations

import torch


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by `temperature` (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}: use greedy=True for argmax")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the `k` largest logits of each row (ties broken by index), set the rest to -inf."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}: use top_k=None to keep every token")
    k = min(k, logits.size(-1))
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to >= `p` (nucleus)."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}: use top_p=None to keep every token")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above this one
    keep_sorted = mass_before < p  # the top token always stays (mass before it is 0)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def sample_next_token(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, greedy: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of (batch, vocab) logits: argmax if `greedy`, else a filtered sample."""
    if greedy:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, greedy: bool) -> None:
    """Reject bad sampling arguments before any work is done."""
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}: "
                         "use greedy=True for argmax decoding")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}: use top_k=None to keep every token")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}: use top_p=None to keep every token")


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             use_cache: bool = True, generator: torch.Generator | None = None,
             eos_token_id: int | None = None) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to each row of `input_ids` (batch, time); return all ids.

    Once the context fills the model's block_size, the oldest tokens slide out of the window
    (the cache is then rebuilt each step). Rows that produced `eos_token_id` are padded with it;
    generation stops early when every row has. Call `model.eval()` first (dropout stays on otherwise).
    """
    check_sampling(temperature, top_k, top_p, greedy)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}: "
                         "add a batch dimension with input_ids[None]")
    block_size = model.config.block_size
    if input_ids.size(1) > block_size:
        raise ValueError(f"prompt of {input_ids.size(1)} tokens is longer than block_size="
                         f"{block_size}: crop it first, e.g. input_ids[:, -{block_size}:]")
    if input_ids.size(1) == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. a BOS id)")
    ids, past = input_ids, None
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        if use_cache and past is not None and past[0][0].size(2) < block_size:
            out = model(ids[:, -1:], cache=past, use_cache=True)  # only the new token
        else:  # first step, no cache, or a full window: run the (cropped) context
            out = model(ids[:, -block_size:], use_cache=use_cache)
        past = out.cache
        next_id = sample_next_token(out.logits[:, -1], temperature=temperature, top_k=top_k,
                                    top_p=top_p, greedy=greedy, generator=generator)
        if eos_token_id is not None:
            next_id = next_id.masked_fill(done, eos_token_id)
            done |= next_id == eos_token_id
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        if eos_token_id is not None and bool(done.all()):
            break
    return ids
