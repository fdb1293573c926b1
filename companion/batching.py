"""Request batching for text generation: one worker thread owns the model and decodes waiting
requests together, one token per step, with left padding and a KV cache.

    engine = Engine(model, tokenizer, max_batch=8, wait_ms=5).start()
    request = engine.submit(prompt_ids, Settings(max_new_tokens=32))   # from any thread
    result = request.result()            # or pass on_event= to receive each token as it comes
    engine.stop()

Continuous batching: when idle, the worker takes the first waiting request and waits up to
`wait_ms` for more (at most `max_batch`); it left-pads their prompts, runs them (the prefill) and
then one decoding step after another for the whole batch. Between two steps, requests that
arrived meanwhile join: their prompts are prefilled together, and their KV cache is appended
to the batch's (the shorter one left-padded with masked zeros). A request leaves the batch as
soon as it is done: its end-of-sequence token, its `max_new_tokens`, its deadline (finish
reason "timeout") or a cancel (a client that went away, "cancelled"); its rows leave the KV
cache, and columns that are padding in every remaining row are cut. Greedy decoding in a batch
gives the same tokens as the request alone up to float rounding: padding is masked, and the
positions count from each request's first real token.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections import Counter
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

FINISH_REASONS = ("stop", "length", "timeout", "cancelled")


@dataclass(frozen=True)
class Settings:
    """How to decode one request: greedy when temperature is 0, else nucleus sampling."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    timeout: float | None = None  # seconds from submission; None: no limit


@dataclass
class Event:
    """What the worker reports: new text and tokens, and at the end a finish reason."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # None until the last event
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Request:
    """One submitted prompt; the worker fills `tokens` and calls `on_event` (from its thread)."""

    prompt_ids: list[int]
    settings: Settings
    on_event: Callable[[Event], None] | None = None
    deadline: float = float("inf")
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        """Ask the worker to drop this request at its next step (safe from any thread)."""
        self.cancelled.set()

    def result(self, timeout: float | None = None) -> Event:
        """Block until the request is finished; the whole text and the counts."""
        if not self.done.wait(timeout):
            raise TimeoutError("the request is not finished")
        return Event(self.text, list(self.tokens), self.finish_reason,
                     len(self.prompt_ids), len(self.tokens))


def _next_tokens(logits: torch.Tensor, requests: list[Request]) -> list[int]:
    """One token per row: argmax for greedy rows, nucleus sampling with each row's generator."""
    chosen = logits.argmax(-1).tolist()
    for i, r in enumerate(requests):
        s = r.settings
        if s.temperature == 0:
            continue
        probs = torch.softmax(logits[i].float() / s.temperature, -1)
        if s.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        chosen[i] = int(torch.multinomial(probs, 1, generator=r.generator))
    return chosen


class Engine:
    """The batching worker: `submit` from any thread, one background thread runs the model."""

    def __init__(self, model, tokenizer, max_batch: int = 8, wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.wait = max_batch, wait_ms / 1000
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.inbox: queue.Queue[Request] = queue.Queue()
        self.batch_sizes: list[int] = []  # requests decoded together at each step
        self.finished: Counter[str] = Counter()  # requests finished, by finish reason
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Engine:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the worker after its current step; waiting requests are cancelled."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while not self.inbox.empty():
            self._finish(self.inbox.get_nowait(), "cancelled")

    def submit(self, prompt_ids: list[int], settings: Settings = Settings(),
               on_event: Callable[[Event], None] | None = None) -> Request:
        """Queue one prompt (token ids) for generation; returns its Request at once."""
        if not prompt_ids:
            raise ValueError("the prompt is empty: send at least one token")
        if settings.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")
        request = Request(list(prompt_ids), settings, on_event)
        if settings.timeout is not None:
            request.deadline = time.monotonic() + settings.timeout
        if settings.temperature > 0:
            request.generator = torch.Generator()
            request.generator.manual_seed(settings.seed if settings.seed is not None
                                          else secrets.randbits(63))  # not the global RNG
        if self._stop.is_set():
            raise RuntimeError("the engine is stopped")
        self.inbox.put(request)
        return request

    # ------------------------------------------------------------------ the worker thread

    def _take(self, limit: int, block: bool) -> list[Request]:
        """Up to `limit` waiting requests: when idle, wait for one and then `wait` for more."""
        taken = []
        if block:
            try:
                taken.append(self.inbox.get(timeout=0.05))
            except queue.Empty:
                return []
        until = time.monotonic() + (self.wait if block else 0)
        while len(taken) < limit:
            try:
                taken.append(self.inbox.get(timeout=max(0.0, until - time.monotonic())))
            except queue.Empty:
                break
        return taken

    def _run(self) -> None:
        rows = Rows()
        while not self._stop.is_set():
            new = self._take(self.max_batch - len(rows.requests), block=not rows.requests)
            if new:  # they join the batch between two steps
                try:
                    rows = rows.join(self._prefill(new))
                except Exception as error:  # a model error ends these requests, not the worker
                    self._fail(new, error)
            if rows.requests:
                try:
                    rows = self._step(rows)
                except Exception as error:
                    self._fail(rows.requests, error)
                    rows = Rows()
        for r in rows.requests:
            self._finish(r, "cancelled")

    def _fail(self, requests: list[Request], error: Exception) -> None:
        for r in requests:
            if not r.done.is_set():
                self._finish(r, f"error: {error}")

    def _emit(self, r: Request, text: str, ids: list[int], finish: str | None = None) -> None:
        if r.on_event is not None:
            try:
                r.on_event(Event(text, ids, finish, len(r.prompt_ids), len(r.tokens)))
            except Exception:  # a receiver that is gone (closed event loop) cancels the request
                r.cancel()

    def _finish(self, r: Request, reason: str) -> None:
        text = self.tokenizer.decode(r.tokens, skip_special_tokens=True) if r.tokens else ""
        rest, r.text, r.finish_reason = text[len(r.text):], text, reason  # held-back characters
        self._emit(r, rest, [], reason)
        self.finished[reason] += 1
        r.done.set()

    def _live(self, r: Request) -> bool:
        """False (and the request is finished) when it was cancelled or is past its deadline."""
        if r.cancelled.is_set():
            self._finish(r, "cancelled")
        elif time.monotonic() > r.deadline:
            self._finish(r, "timeout")
        return not r.done.is_set()

    def _append(self, r: Request, token: int) -> str | None:
        """Record one new token and send the text it completes; the finish reason if done."""
        if token in self.eos:
            return "stop"
        r.tokens.append(token)
        text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # hold back an incomplete UTF-8 character
            new, r.text = text[len(r.text):], text
            self._emit(r, new, [token])
        return "length" if len(r.tokens) >= r.settings.max_new_tokens else None

    def _choose(self, rows: Rows, logits: torch.Tensor) -> Rows:
        """Pick each row's next token, report it, and keep the rows that go on."""
        tokens = _next_tokens(logits, rows.requests)
        keep = []
        for i, (r, token) in enumerate(zip(rows.requests, tokens)):
            reason = self._append(r, token)
            if reason is not None:
                self._finish(r, reason)
            elif self._live(r):
                keep.append(i)
        rows.pending = torch.tensor(tokens).unsqueeze(1)
        return rows.select(keep)

    @torch.no_grad()
    def _prefill(self, requests: list[Request]) -> Rows:
        """Run the prompts of new requests, left-padded, and pick their first tokens."""
        requests = [r for r in requests if self._live(r)]
        if not requests:
            return Rows()
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        rows = Rows(requests, cache, mask, positions[:, -1:])
        return self._choose(rows, out.logits[:, -1])

    @torch.no_grad()
    def _step(self, rows: Rows) -> Rows:
        """One decoding step for every row: feed its last token, pick the next."""
        self.batch_sizes.append(len(rows.requests))
        rows.mask = torch.cat([rows.mask, torch.ones((len(rows.requests), 1), dtype=torch.long)], 1)
        rows.positions = rows.positions + 1
        out = self.model(input_ids=rows.pending, attention_mask=rows.mask, position_ids=rows.positions,
                         cache=rows.cache, use_cache=True, logits_to_keep=1)
        return self._choose(rows, out.logits[:, -1])


@dataclass
class Rows:
    """The requests being decoded together, their KV cache, attention mask (left padding is 0),
    the position of each row's last token and the token each row feeds next."""

    requests: list[Request] = field(default_factory=list)
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    pending: torch.Tensor | None = None

    def select(self, keep: list[int]) -> Rows:
        """Only the rows `keep`; the cache loses the columns that are padding in every row."""
        if len(keep) == len(self.requests):
            return self
        if not keep:
            return Rows()
        index = torch.tensor(keep)
        mask = self.mask[index]
        first = int(mask.any(0).nonzero()[0])
        layers = [(k[index, :, first:], v[index, :, first:]) for k, v, *_ in self.cache]
        return Rows([self.requests[i] for i in keep], _cache(layers), mask[:, first:],
                    self.positions[index], self.pending[index])

    def join(self, other: Rows) -> Rows:
        """Both sets of rows in one batch: the shorter cache is left-padded to the longer."""
        if not other.requests:
            return self
        if not self.requests:
            return other
        width = max(self.mask.shape[1], other.mask.shape[1])

        def pad(x: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(x.shape)
            shape[dim] = width - x.shape[dim]
            return torch.cat([x.new_zeros(shape), x], dim)

        layers = [(torch.cat([pad(k1, 2), pad(k2, 2)]), torch.cat([pad(v1, 2), pad(v2, 2)]))
                  for (k1, v1, *_), (k2, v2, *_) in zip(self.cache, other.cache)]
        return Rows(self.requests + other.requests, _cache(layers),
                    torch.cat([pad(self.mask, 1), pad(other.mask, 1)]),
                    torch.cat([self.positions, other.positions]), torch.cat([self.pending, other.pending]))


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A DynamicCache holding these (keys, values) per layer."""
    cache = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache
