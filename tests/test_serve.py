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
