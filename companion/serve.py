"""An HTTP service for the book's sentiment classifiers and its retrieval assistant, with FastAPI.

    python -m companion.serve                      # http://127.0.0.1:8000; interactive docs at /docs
    curl -s localhost:8000/sentiment -H 'Content-Type: application/json' \\
         -d '{"text": "a gripping, funny film", "language": "en"}'
    curl -s localhost:8000/assistant -H 'Content-Type: application/json' \\
         -d '{"question": "What does the yield statement do in Python?", "language": "en"}'

The models are loaded once, when the server starts (FastAPI's lifespan), not per request:
English sentiment is MiniLM with the shipped LoRA adapter of recipe polarity-lora (seed 0),
Chinese the shipped character BERT of recipe reviews-zh (seed 0); the assistant is the one of
recipe rag (`companion.rag.load_assistant`: the retriever and refusal threshold it chose on
validation, MiniLM for queries, SmolLM2-135M-Instruct to answer). Requests are validated before
any model runs: an empty or over-long text or question, a language other than "en" or "zh", an
unknown field or a body that is not JSON gets a 422 answer whose "error" says what to change.
"""

from __future__ import annotations

import argparse
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
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_CHARS = 2000
MAX_QUESTION = 500
LANGUAGES = {"en": "English (MiniLM + LoRA, recipe polarity-lora, seed 0)",
             "zh": "Chinese (character BERT, recipe reviews-zh, seed 0)"}
ASSISTANT_LANGUAGES = {"en": "english", "zh": "chinese"}  # the service's codes -> companion.rag's
EXAMPLES = {"/sentiment": '{"text": "...", "language": "en"}',
            "/assistant": '{"question": "...", "language": "en"}'}


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


def _explain(errors: list[dict], path: str = "/sentiment") -> str:
    """One sentence per problem of a request, for people rather than programs."""
    example = EXAMPLES.get(path, EXAMPLES["/sentiment"])
    fields = ", ".join(json.loads(example))
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
        else:
            message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{where} is {message}" if message.startswith("blank") else f"{where}: {message}")
    return "; ".join(parts)


def create_app(load: Callable[[], Classifiers] = load_classifiers,
               load_assistant: Callable[[], object] | None = None) -> FastAPI:
    """The FastAPI application; `load` builds the classifiers and `load_assistant` the assistant
    (a `companion.rag.Assistant`; None: no /assistant), each once, at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start = time.perf_counter()
        app.state.classifiers = load()
        app.state.assistant = load_assistant() if load_assistant is not None else None
        app.state.load_seconds = time.perf_counter() - start
        yield

    app = FastAPI(title="LLMs from Zero: sentiment and assistant service", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg", "ctx")} for e in exc.errors()]
        details = [{k: v for k, v in e.items() if k != "ctx"} for e in errors]
        return JSONResponse(status_code=422, content={"error": _explain(errors, request.url.path),
                                                      "details": details})

    @app.get("/health")
    def health() -> dict:
        """Ready once the models are loaded; which languages are served, whether the assistant is."""
        return {"status": "ok", "languages": LANGUAGES, "assistant": app.state.assistant is not None}

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

    return app


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.serve [--host H] [--port P] [--threads N]."""
    import uvicorn

    import companion

    parser = argparse.ArgumentParser(prog="python -m companion.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, help="torch threads (default: the book's setting)")
    parser.add_argument("--no-assistant", action="store_true",
                        help="serve sentiment only (the assistant takes about a minute to index its passages)")
    args = parser.parse_args(argv)
    companion.setup(threads=args.threads)  # None: the book's thread setting
    from companion.rag import load_assistant

    app = create_app(load_assistant=None if args.no_assistant else load_assistant)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
