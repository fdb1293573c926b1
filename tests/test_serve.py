"""companion.serve: the sentiment service answers, validates every request, loads its models once."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from companion import serve


@pytest.fixture(scope="module")
def loads():
    return []


@pytest.fixture(scope="module")
def client(loads):
    def load():
        loads.append(time.perf_counter())
        return serve.load_classifiers()

    with TestClient(serve.create_app(load)) as client:
        yield client


def test_both_languages_are_classified(client):
    cases = [("en", "a gripping , funny and moving film .", "positive"),
             ("en", "a dull , lifeless mess that wastes its cast .", "negative"),
             ("zh", "质量很好，物流也快，非常满意", "positive"),
             ("zh", "太差了，用了两天就坏了，不推荐", "negative")]
    for language, text, label in cases:
        r = client.post("/sentiment", json={"text": text, "language": language})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == label, (text, body)
        assert 0 <= body["probability_positive"] <= 1 and body["language"] == language
    assert client.get("/health").json()["status"] == "ok"


def test_the_service_agrees_with_the_model_called_directly(client):
    texts = ["an utterly charming film .", "it is not funny at all ."]
    direct = serve.load_classifiers().positive_probability(texts, "en")
    served = [client.post("/sentiment", json={"text": t}).json()["probability_positive"] for t in texts]
    assert served == pytest.approx(direct, abs=1e-4)


@pytest.mark.parametrize("body, says", [
    ({"text": ""}, "text is empty"),
    ({"text": "   "}, "blank"),
    ({"text": "x" * (serve.MAX_CHARS + 1)}, "longer than 2000"),
    ({"text": "bon film", "language": "fr"}, "'fr' is not supported"),
    ({"language": "en"}, "text is missing"),
    ({"text": "fine", "lang": "en"}, "lang is not a field"),
    ({"text": 42}, "text"),
])
def test_bad_requests_get_422_with_a_clear_message(client, body, says):
    r = client.post("/sentiment", json=body)
    assert r.status_code == 422
    assert says in r.json()["error"], r.json()


def test_a_body_that_is_not_json_gets_a_clear_message(client):
    r = client.post("/sentiment", content=b"{text: no quotes}", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]


def test_models_are_loaded_once_for_many_requests(client, loads):
    for _ in range(3):
        client.post("/sentiment", json={"text": "fine"})
    assert len(loads) == 1


def test_one_real_request_over_loopback():
    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(serve.create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 120
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        assert server.started, "the server did not start within 120 s"
        r = httpx.post(f"http://127.0.0.1:{port}/sentiment", json={"text": "a wonderful film ."}, timeout=30)
        assert r.status_code == 200 and r.json()["label"] == "positive"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --------------------------------------------------------------------------- the assistant


@pytest.fixture(scope="module")
def helper():
    """The shipped assistant over the first 60 passages of each knowledge base (indexing all of
    them takes a minute), answering with at most 12 new tokens."""
    from companion import rag
    from companion import retrieval as R

    encoder, tokenizer = R.load_encoder()
    knowledge = {}
    for language in R.LANGUAGES:
        kb = rag.passages(language)[:60]
        vectors = R.embed([p.text for p in kb], encoder, tokenizer)
        knowledge[language] = rag.KnowledgeBase(language, kb, R.BM25Index(kb, language), R.DenseIndex(vectors))
    return rag.load_assistant(knowledge=knowledge, max_new_tokens=12)


@pytest.fixture(scope="module")
def assistant_client(helper):
    with TestClient(serve.create_app(lambda: None, lambda: helper)) as client:
        yield client


def test_the_assistant_answers_from_the_passages_the_recipe_chose(assistant_client, helper):
    from companion import rag

    results = rag.shipped_results()
    for language, code in (("english", "en"), ("chinese", "zh")):
        kb = helper.knowledge[language].passages
        question = kb[0].text  # a message that repeats a passage is retrieved, and answered
        r = assistant_client.post("/assistant", json={"question": question, "language": code})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["retriever"] == results["languages"][language]["retriever"]
        assert body["threshold"] == pytest.approx(results["languages"][language]["threshold"])
        assert [p["number"] for p in body["passages"]] == [1, 2, 3]
        assert body["passages"][0]["text"] in {p.text for p in kb}
        assert set(body["cited"]) <= {p["pid"] for p in body["passages"]}
        assert body["answer"] and not body["ruled_out"]
        direct = helper.answer(question, language)
        assert direct["answer"] == body["answer"] and direct["cited"] == body["cited"]


def test_below_the_threshold_the_assistant_declines_without_generating(assistant_client, helper):
    from companion import rag

    saved = dict(helper.threshold)
    helper.threshold["english"] = float("inf")
    try:
        body = assistant_client.post("/assistant", json={"question": "How much is a train ticket to Oslo?"}).json()
    finally:
        helper.threshold.update(saved)
    assert body["answer"] == rag.REFUSAL["english"] and body["refused"] and body["ruled_out"]
    assert body["cited"] == [] and len(body["passages"]) == 3


@pytest.mark.parametrize("body, says", [
    ({"question": ""}, "question is empty"),
    ({"question": "  "}, "question is blank"),
    ({"question": "x" * (serve.MAX_QUESTION + 1)}, f"longer than {serve.MAX_QUESTION}"),
    ({"question": "où?", "language": "fr"}, "'fr' is not supported"),
    ({"language": "en"}, "question is missing"),
    ({"question": "hi", "text": "hi"}, "text is not a field of this request (fields: question, language)"),
])
def test_bad_assistant_requests_get_422_with_a_clear_message(assistant_client, body, says):
    r = assistant_client.post("/assistant", json=body)
    assert r.status_code == 422
    assert says in r.json()["error"], r.json()


def test_a_service_without_the_assistant_says_so(client):
    r = client.post("/assistant", json={"question": "Hello"})
    assert r.status_code == 503 and "without the assistant" in r.json()["error"]
    assert client.get("/health").json()["assistant"] is False


# --------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def smol():
    from companion.instruct import load_model

    return load_model("smollm2")


def engine_loader(smol, wait_ms: float = 20):
    from companion.batching import Engine

    return lambda: Engine(*smol, max_batch=8, wait_ms=wait_ms)


@pytest.fixture(scope="module")
def gen_client(smol):
    with TestClient(serve.create_app(lambda: None, None, engine_loader(smol))) as client:
        yield client


def greedy_alone(smol, prompt: str, n: int) -> str:
    """transformers' greedy generate on the prompt alone, decoded."""
    model, tokenizer = smol
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=n, do_sample=False)[0, ids["input_ids"].shape[1]:]
    return tokenizer.decode(out, skip_special_tokens=True)


def sse_events(lines) -> list[dict]:
    import json

    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


def test_generate_answers_like_greedy_decoding_alone(gen_client, smol):
    r = gen_client.post("/generate", json={"prompt": "What is the capital of France?", "max_new_tokens": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == greedy_alone(smol, "What is the capital of France?", 6)
    assert body["finish_reason"] == "length" and body["completion_tokens"] == 6
    assert body["prompt_tokens"] > 6 and body["model"] == serve.GENERATOR
    chat = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi"}]
    r = gen_client.post("/generate", json={"messages": chat, "max_new_tokens": 4, "temperature": 0.7,
                                           "top_p": 0.9, "seed": 3})
    assert r.status_code == 200 and r.json()["completion_tokens"] <= 4
    assert gen_client.get("/health").json()["generate"] is True


def test_generate_streams_server_sent_events(gen_client):
    body = {"prompt": "Write a haiku about the sea.", "max_new_tokens": 5}
    whole = gen_client.post("/generate", json=body).json()
    with gen_client.stream("POST", "/generate", json=body | {"stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert [e["finish_reason"] for e in events] == [None] * 5 + ["length"]
    assert "".join(e["text"] for e in events) == whole["text"]
    assert events[-1]["completion_tokens"] == 5 and events[-1]["prompt_tokens"] == whole["prompt_tokens"]


@pytest.mark.parametrize("body, says", [
    ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens is 0, but it should be greater than or equal to"),
    ({"prompt": "hi", "max_new_tokens": 1000}, "max_new_tokens is 1000, but it should be less than or equal"),
    ({"prompt": "hi", "max_new_tokens": 2.5}, "max_new_tokens is 2.5"),
    ({"prompt": "hi", "temperature": -1}, "temperature is -1, but it should be greater than or equal to 0"),
    ({"prompt": "hi", "top_p": 0}, "top_p is 0, but it should be greater than 0"),
    ({"prompt": "hi", "top_p": 1.5}, "top_p is 1.5, but it should be less than or equal to 1"),
    ({"prompt": "hi", "timeout": 0}, "timeout is 0"),
    ({"prompt": "hi", "stream": "maybe"}, "stream is \"maybe\", but it should be a valid boolean"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "either a prompt or messages"),
    ({"max_new_tokens": 4}, "either a prompt or messages"),
    ({"prompt": "   "}, "blank"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role is \"robot\""),
    ({"messages": []}, "messages"),
    ({"prompt": "hi", "max_tokens": 4}, "max_tokens is not a field of this request (fields: prompt, messages"),
])
def test_bad_generate_requests_get_422_with_a_clear_message(gen_client, body, says):
    r = gen_client.post("/generate", json=body)
    assert r.status_code == 422
    assert says in r.json()["error"], r.json()


def test_a_prompt_too_long_in_tokens_gets_422_with_the_count(gen_client):
    r = gen_client.post("/generate", json={"prompt": "hello " * 1100})
    assert r.status_code == 422
    error = r.json()["error"]
    assert "too long" in error and f"limit is {serve.MAX_PROMPT_TOKENS} tokens" in error
    count = int(error.split(": ")[1].split(" tokens")[0])
    assert count > serve.MAX_PROMPT_TOKENS


def test_a_request_past_its_timeout_gets_504_or_a_timeout_event(gen_client):
    r = gen_client.post("/generate", json={"prompt": "Tell me a long story.", "max_new_tokens": 256,
                                           "timeout": 0.3})
    assert r.status_code == 504 and "timeout of 0.3 s" in r.json()["error"]
    assert r.json()["completion_tokens"] < 256
    with gen_client.stream("POST", "/generate", json={"prompt": "Tell me a long story.", "stream": True,
                                                      "max_new_tokens": 256, "timeout": 0.3}) as r:
        events = sse_events(r.iter_lines())
    assert events[-1]["finish_reason"] == "timeout" and len(events) < 257


def test_a_service_without_the_generator_says_so(client):
    r = client.post("/generate", json={"prompt": "Hello"})
    assert r.status_code == 503 and "without the generation model" in r.json()["error"]


def test_over_loopback_requests_are_batched_and_a_client_leaving_mid_stream_is_dropped(smol):
    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = serve.create_app(lambda: None, None, engine_loader(smol, wait_ms=300))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/generate"
    try:
        deadline = time.time() + 120
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        assert server.started, "the server did not start within 120 s"
        prompts = ["What is 2 + 2?", "Hi", "List three colours.", "Name a fruit."]
        answers = [None] * len(prompts)

        def ask(i):
            answers[i] = httpx.post(url, json={"prompt": prompts[i], "max_new_tokens": 4}, timeout=60)

        clients = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert max(app.state.engine.batch_sizes) > 1  # decoded together...
        for prompt, answer in zip(prompts, answers):  # ...and each as if alone
            assert answer.json()["text"] == greedy_alone(smol, prompt, 4)

        engine = app.state.engine
        with httpx.stream("POST", url, json={"prompt": "Tell me a long story.", "stream": True,
                                             "max_new_tokens": 256}, timeout=60) as r:
            lines = r.iter_lines()
            first = sse_events(next(lines) for _ in range(6))  # 3 events and their blank lines
        assert len(first) == 3 and first[0]["finish_reason"] is None
        deadline = time.time() + 30
        while engine.finished["cancelled"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert engine.finished["cancelled"] == 1, "the request of the client that left was not dropped"
        r = httpx.post(url, json={"prompt": "Hi", "max_new_tokens": 3}, timeout=60)
        assert r.status_code == 200 and r.json()["completion_tokens"] == 3
    finally:
        server.should_exit = True
        thread.join(timeout=30)
