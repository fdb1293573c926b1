"""An HTTP service for the book's sentiment classifiers, English and Chinese, with FastAPI.

    python -m companion.serve                      # http://127.0.0.1:8000; interactive docs at /docs
    curl -s localhost:8000/sentiment -H 'Content-Type: application/json' \\
         -d '{"text": "a gripping, funny film", "language": "en"}'

The models are loaded once, when the server starts (FastAPI's lifespan), not per request:
English is MiniLM with the shipped LoRA adapter of recipe polarity-lora (seed 0), Chinese the
shipped character BERT of recipe reviews-zh (seed 0). Requests are validated before any model
runs: an empty or over-long text, a language other than "en" or "zh", an unknown field or a body
that is not JSON gets a 422 answer whose "error" says what to change.
"""

from __future__ import annotations

import argparse
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
LANGUAGES = {"en": "English (MiniLM + LoRA, recipe polarity-lora, seed 0)",
             "zh": "Chinese (character BERT, recipe reviews-zh, seed 0)"}


class SentimentRequest(BaseModel):
    """One text to classify, and its language."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_CHARS, description="the text, 1 to 2,000 characters")
    language: str = Field("en", description="'en' or 'zh'")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is blank: send at least one non-space character")
        return text

    @field_validator("language")
    @classmethod
    def _supported(cls, language: str) -> str:
        if language not in LANGUAGES:
            raise ValueError(f"language {language!r} is not supported: use one of {sorted(LANGUAGES)}")
        return language


class SentimentResponse(BaseModel):
    """The label, P(positive), and which model gave them."""

    label: Literal["negative", "positive"]
    probability_positive: float
    language: str
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


def _explain(errors: list[dict]) -> str:
    """One sentence per problem of a request, for people rather than programs."""
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        if e.get("type") == "json_invalid":
            parts.append("the body is not valid JSON: send an object like "
                         '{"text": "...", "language": "en"} with Content-Type: application/json')
        elif e.get("type") == "missing":
            parts.append(f"{where} is missing")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"{where} is not a field of this request (fields: text, language)")
        elif e.get("type") == "string_too_long":
            parts.append(f"{where} is longer than {MAX_CHARS} characters: split it")
        elif e.get("type") == "string_too_short":
            parts.append(f"{where} is empty")
        else:
            parts.append(f"{where}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


def create_app(load: Callable[[], Classifiers] = load_classifiers) -> FastAPI:
    """The FastAPI application; `load` builds the models once, at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        start = time.perf_counter()
        app.state.classifiers = load()
        app.state.load_seconds = time.perf_counter() - start
        yield

    app = FastAPI(title="LLMs from Zero: sentiment service", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"error": _explain(errors), "details": errors})

    @app.get("/health")
    def health() -> dict:
        """Ready once the models are loaded; which languages are served."""
        return {"status": "ok", "languages": LANGUAGES}

    @app.post("/sentiment")
    def sentiment(request: SentimentRequest) -> SentimentResponse:
        """The sentiment of one text (a plain `def`: FastAPI runs it in a worker thread)."""
        p = app.state.classifiers.positive_probability([request.text], request.language)[0]
        return SentimentResponse(label="positive" if p > 0.5 else "negative",
                                 probability_positive=round(p, 4), language=request.language,
                                 model=LANGUAGES[request.language])

    return app


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.serve [--host H] [--port P] [--threads N]."""
    import uvicorn

    import companion

    parser = argparse.ArgumentParser(prog="python -m companion.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, help="torch threads (default: the book's setting)")
    args = parser.parse_args(argv)
    companion.setup(threads=args.threads)  # None: the book's thread setting
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
