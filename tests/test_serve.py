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
