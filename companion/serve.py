"""An HTTP service (FastAPI) for the book's sentiment classifiers, assistant and SmolLM2.

    python -m companion.serve                      # http://127.0.0.1:8000; interactive docs at /docs
    curl -s localhost:8000/sentiment -H 'Content-Type: application/json' \\
         -d '{"text": "a gripping, funny film", "language": "en"}'
    curl -s localhost:8000/assistant -H 'Content-Type: application/json' \\
         -d '{"question": "What does the yield statement do in Python?", "language": "en"}'
    curl -sN localhost:8000/generate -H 'Content-Type: application/json' \\
         -d '{"prompt": "Write a haiku about the sea.", "max_new_tokens": 32, "stream": true}'

The models are loaded once, when the server starts (FastAPI's lifespan), not per request:
English sentiment is MiniLM with the shipped LoRA adapter of recipe polarity-lora (seed 0),
Chinese the shipped character BERT of recipe reviews-zh (seed 0); the assistant is the one of
recipe rag (`companion.rag.load_assistant`: the retriever and refusal threshold it chose on
validation, MiniLM for queries, SmolLM2-135M-Instruct to answer). Requests are validated before
any model runs: an empty or over-long text or question, a language other than "en" or "zh", an
unknown field or a body that is not JSON gets a 422 answer whose "error" says what to change.

POST /generate is SmolLM2-135M-Instruct (float32) behind `companion.batching.Engine`: one worker
thread owns the model and decodes the requests in flight together, one token per step
(continuous batching: at most --max-batch; a new request joins between two steps, a finished
one leaves; --max-batch 1 decodes one request at a time). The body is a "prompt" (one user message) or
chat "messages", with "max_new_tokens" (1 to 256), "temperature" (0 = greedy, up to 2), "top_p"
(0 < p <= 1), "seed", "timeout" (seconds) and "stream". A prompt longer than 1,024 tokens after
the chat template gets a 422 with its count. Without "stream" the answer is JSON (text, token
counts, finish reason "stop" or "length"); with it, server-sent events (text/event-stream), one
per token, the last with the finish reason and the counts. A request that runs past its timeout
(default --timeout, 60 s) gets a 504, or, streaming, a last event with finish reason "timeout";
a client that goes away mid-stream is dropped from its batch and the server goes on.

    python -m companion.serve [--no-assistant] [--no-generate] [--threads N] [--max-batch B]
                              [--batch-wait-ms MS] [--timeout S] [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CHARS = 2000
MAX_QUESTION = 500
LANGUAGES = {"en": "English (MiniLM + LoRA, recipe polarity-lora, seed 0)",
             "zh": "Chinese (character BERT, recipe reviews-zh, seed 0)"}
ASSISTANT_LANGUAGES = {"en": "english", "zh": "chinese"}  # the service's codes -> companion.rag's
EXAMPLES = {"/sentiment": '{"text": "...", "language": "en"}',
            "/assistant": '{"question": "...", "language": "en"}',
            "/generate": '{"prompt": "...", "max_new_tokens": 64}'}
GENERATOR = "HuggingFaceTB/SmolLM2-135M-Instruct (float32)"
MAX_PROMPT_TOKENS = 1024  # after the chat template
MAX_NEW_TOKENS = 256
MAX_TIMEOUT = 600.0
DEFAULT_TIMEOUT = 60.0


def _check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} is not supported: use one of {sorted(LANGUAGES)}")
    return language


def _check_not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("blank: send at least one non-space character")
    return text


class SentimentRequest(BaseModel):
    """One text to classify, and its language."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_CHARS, description="the text, 1 to 2,000 characters")
    language: str = Field("en", description="'en' or 'zh'")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        return _check_not_blank(text)

    @field_validator("language")
    @classmethod
    def _supported(cls, language: str) -> str:
        return _check_language(language)


class SentimentResponse(BaseModel):
    """The label, P(positive), and which model gave them."""

    label: Literal["negative", "positive"]
    probability_positive: float
    language: str
    model: str


class AssistantRequest(BaseModel):
    """One message to the assistant, and its language."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=MAX_QUESTION, description="the message, 1 to 500 characters")
    language: str = Field("en", description="'en' or 'zh'")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, question: str) -> str:
        return _check_not_blank(question)

    @field_validator("language")
    @classmethod
    def _supported(cls, language: str) -> str:
        return _check_language(language)


class RetrievedPassage(BaseModel):
    """A passage the assistant was shown: its number in the prompt ([1], [2], ...), id, source."""

    number: int
    pid: int
    source: str
    text: str
    score: float


class AssistantResponse(BaseModel):
    """The answer; whether it declines, and whether the refusal rule declined before any
    generation; the passages shown, and the ids of those the answer cites."""

    answer: str
    refused: bool
    ruled_out: bool
    passages: list[RetrievedPassage]
    cited: list[int]
    language: str
    retriever: str
    threshold: float


class ChatMessage(BaseModel):
    """One message of a chat."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=20 * MAX_CHARS)


class GenerateRequest(BaseModel):
    """A prompt (one user message) or a chat, and how to decode the reply."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, min_length=1, max_length=20 * MAX_CHARS,
                               description="one user message (or send messages)")
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=64)
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (temperature > 0)")
    seed: int | None = Field(None, ge=0, description="for reproducible sampling")
    timeout: float | None = Field(None, gt=0, le=MAX_TIMEOUT, description="seconds")
    stream: bool = Field(False, description="server-sent events, one per token")

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send either a prompt or messages (exactly one of them)")
        if self.prompt is not None:
            _check_not_blank(self.prompt)
        return self


class GenerateResponse(BaseModel):
    """The generated text, the token counts and why decoding stopped."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    model: str


@dataclass
class Classifiers:
    """The loaded models: English (classifier, tokenizer, max tokens) and Chinese (model, vocabulary)."""

    english: tuple
    chinese: tuple

    @torch.no_grad()
    def positive_probability(self, texts: list[str], language: str) -> list[float]:
        """P(positive) of each text, with the model of `language`."""
        if language == "en":
            from companion import finetune

            model, tokenizer, max_length = self.english
            data = finetune.encode(tokenizer, texts, [0] * len(texts), max_length)
            return finetune.evaluate(model, data).probabilities[:, 1].tolist()
        if language == "zh":
            from companion import reviews

            model, vocab = self.chinese
            return reviews.evaluate(model, vocab, texts, [0] * len(texts))[1].tolist()
        raise ValueError(f"language must be one of {sorted(LANGUAGES)}, got {language!r}")


def load_classifiers() -> Classifiers:
    """Both shipped classifiers, each checked against its recipe's results.json."""
    from transformers import AutoTokenizer

    from companion import recipes, reviews

    english = recipes.shipped_adapter("polarity-lora", 0)
    config = recipes.shipped_results("polarity-lora")["config"]
    tokenizer = AutoTokenizer.from_pretrained(config["model"])
    reviews.shipped_results()  # checks the shipped files
    chinese = reviews.load_shipped(reviews.SHIPPED, 0)
    return Classifiers(english=(english, tokenizer, config["max_length"]), chinese=chinese)


def load_generator(max_batch: int = 8, wait_ms: float = 5.0):
    """SmolLM2-135M-Instruct in float32 behind a batching engine (not started)."""
    from companion.batching import Engine
    from companion.instruct import load_model

    model, tokenizer = load_model("smollm2")
    return Engine(model, tokenizer, max_batch=max_batch, wait_ms=wait_ms)


REQUESTS = {"/sentiment": SentimentRequest, "/assistant": AssistantRequest,
            "/generate": GenerateRequest}
BOUNDS = {"less_than_equal", "less_than", "greater_than_equal", "greater_than", "int_parsing",
          "int_from_float", "float_parsing", "bool_parsing", "literal_error"}


def _explain(errors: list[dict], path: str = "/sentiment") -> str:
    """One sentence per problem of a request, for people rather than programs."""
    example = EXAMPLES.get(path, EXAMPLES["/sentiment"])
    fields = ", ".join(REQUESTS.get(path, SentimentRequest).model_fields)
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON: send an object like {example} "
                         "with Content-Type: application/json")
        elif e.get("type") == "missing":
            parts.append(f"{where} is missing")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"{where} is not a field of this request (fields: {fields})")
        elif e.get("type") == "string_too_long":
            limit = e.get("ctx", {}).get("max_length", MAX_CHARS)
            parts.append(f"{where} is longer than {limit} characters: shorten or split it")
        elif e.get("type") == "string_too_short":
            parts.append(f"{where} is empty")
        elif e.get("type") in BOUNDS and "input" in e:
            rule = str(e.get("msg", "invalid")).replace("Input should", "it should")
            parts.append(f"{where} is {json.dumps(e['input'])}, but {rule}")
        else:
            message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{where} is {message}" if message.startswith("blank") else f"{where}: {message}")
    return "; ".join(parts)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(load: Callable[[], Classifiers] = load_classifiers,
               load_assistant: Callable[[], object] | None = None,
               load_generator: Callable[[], object] | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> FastAPI:
    """The FastAPI application; `load` builds the classifiers, `load_assistant` the assistant
    (a `companion.rag.Assistant`; None: no /assistant) and `load_generator` the generation engine
    (a `companion.batching.Engine`; None: no /generate), each once, at start-up. `timeout`:
    the seconds a generation request may take when it does not say."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start = time.perf_counter()
        app.state.classifiers = load()
        app.state.assistant = load_assistant() if load_assistant is not None else None
        app.state.engine = load_generator().start() if load_generator is not None else None
        app.state.load_seconds = time.perf_counter() - start
        yield
        if app.state.engine is not None:
            app.state.engine.stop()

    app = FastAPI(title="LLMs from Zero: sentiment and assistant service", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        keys = ("type", "loc", "msg", "ctx", "input")
        errors = [{k: v for k, v in e.items() if k in keys} for e in exc.errors()]
        details = [{k: v for k, v in e.items() if k not in ("ctx", "input")} for e in errors]
        return JSONResponse(status_code=422, content={"error": _explain(errors, request.url.path),
                                                      "details": details})

    @app.get("/health")
    def health() -> dict:
        """Ready once the models are loaded; which languages are served, whether the assistant is."""
        return {"status": "ok", "languages": LANGUAGES, "assistant": app.state.assistant is not None,
                "generate": app.state.engine is not None}

    @app.post("/sentiment")
    def sentiment(request: SentimentRequest) -> SentimentResponse:
        """The sentiment of one text (a plain `def`: FastAPI runs it in a worker thread)."""
        p = app.state.classifiers.positive_probability([request.text], request.language)[0]
        return SentimentResponse(label="positive" if p > 0.5 else "negative",
                                 probability_positive=round(p, 4), language=request.language,
                                 model=LANGUAGES[request.language])

    @app.post("/assistant", response_model=AssistantResponse)
    def assistant(request: AssistantRequest):
        """The assistant's answer to one message, with the passages it was shown and cites."""
        helper = app.state.assistant
        if helper is None:
            return JSONResponse(status_code=503, content={
                "error": "this service was started without the assistant: start it with "
                         "python -m companion.serve (without --no-assistant)"})
        language = ASSISTANT_LANGUAGES[request.language]
        if language not in helper.knowledge:
            return JSONResponse(status_code=422, content={
                "error": f"language {request.language!r} is not loaded in this assistant: use one of "
                         f"{sorted(k for k, v in ASSISTANT_LANGUAGES.items() if v in helper.knowledge)}"})
        reply = helper.answer(request.question, language)
        passages = [RetrievedPassage(number=i, **p) for i, p in enumerate(reply["passages"], start=1)]
        return AssistantResponse(answer=reply["answer"], refused=reply["refused"],
                                 ruled_out=reply["ruled_out"], passages=passages, cited=reply["cited"],
                                 language=request.language, retriever=helper.retriever[language],
                                 threshold=helper.threshold[language])

    @app.post("/generate", response_model=GenerateResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def generate(request: GenerateRequest):
        """SmolLM2's reply to a prompt or chat, as JSON or (stream: true) server-sent events."""
        from companion.batching import Event, Settings

        engine = app.state.engine
        if engine is None:
            return JSONResponse(status_code=503, content={
                "error": "this service was started without the generation model: start it with "
                         "python -m companion.serve (without --no-generate)"})
        messages = ([{"role": "user", "content": request.prompt}] if request.prompt is not None
                    else [m.model_dump() for m in request.messages])
        ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   return_dict=False)
        if len(ids) > MAX_PROMPT_TOKENS:
            return JSONResponse(status_code=422, content={
                "error": f"the prompt is too long: {len(ids)} tokens after the chat template, "
                         f"the limit is {MAX_PROMPT_TOKENS} tokens: shorten it"})
        seconds = request.timeout or timeout
        settings = Settings(max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                            top_p=request.top_p, seed=request.seed, timeout=seconds)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = engine.submit(ids, settings, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        # The worker enforces the timeout between decoding steps; this is the backstop for a
        # request still waiting behind a long batch.
        deadline = time.monotonic() + seconds + 0.5

        async def next_event() -> Event:
            try:
                return await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                job.cancel()
                return Event("", [], "timeout", len(ids), len(job.tokens))

        async def stream():
            try:
                while (event := await next_event()).finish_reason is None:
                    yield _sse({"text": event.text, "token_ids": event.token_ids, "finish_reason": None})
                yield _sse({"text": event.text, "finish_reason": event.finish_reason,
                            "prompt_tokens": event.prompt_tokens,
                            "completion_tokens": event.completion_tokens})
            finally:
                job.cancel()  # a client that went away: the worker drops it at its next step

        if request.stream:
            return EventSourceResponse(stream(), headers={"Cache-Control": "no-cache"})
        try:
            while (event := await next_event()).finish_reason is None:
                pass
        finally:
            job.cancel()
        counts = {"prompt_tokens": len(ids), "completion_tokens": len(job.tokens)}
        if event.finish_reason == "timeout":
            return JSONResponse(status_code=504, content={
                "error": f"the request took longer than its timeout of {seconds:g} s: ask for "
                         "fewer max_new_tokens, or set a longer timeout", "text": job.text, **counts})
        if event.finish_reason not in ("stop", "length"):
            return JSONResponse(status_code=500,
                                content={"error": f"generation failed ({event.finish_reason})"})
        return GenerateResponse(text=job.text, finish_reason=event.finish_reason, model=GENERATOR, **counts)

    return app


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.serve [--host H] [--port P] [--threads N] [...]."""
    import uvicorn

    import companion

    parser = argparse.ArgumentParser(prog="python -m companion.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, help="torch threads (default: the book's setting)")
    parser.add_argument("--no-assistant", action="store_true",
                        help="no /assistant (the assistant takes about a minute to index its passages)")
    parser.add_argument("--no-generate", action="store_true", help="no /generate (no SmolLM2 engine)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="/generate: requests decoded together at most (1: no batching)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="/generate: how long to wait for more requests before a batch starts")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="/generate: seconds a request may take unless it says (default 60)")
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.batch_wait_ms < 0 or args.timeout <= 0:
        parser.error("--max-batch must be >= 1, --batch-wait-ms >= 0 and --timeout > 0")
    companion.setup(threads=args.threads)  # None: the book's thread setting
    from companion.rag import load_assistant

    generator = None if args.no_generate else lambda: load_generator(args.max_batch, args.batch_wait_ms)
    app = create_app(load_assistant=None if args.no_assistant else load_assistant,
                     load_generator=generator, timeout=args.timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
