"""Retrieval server + client against a real uvicorn on 127.0.0.1 (real FAISS, real MiniLM)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searchgym.retrieval import load_retriever
from searchgym.retrieval.client import RemoteRetriever, RetrievalRequestError
from searchgym.retrieval.server import ServerConfig, create_app

from live_server import LiveServer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def server(index_dir):
    config = ServerConfig(max_queries=16, max_query_chars=200, max_topk=20, max_body_bytes=4096)
    with LiveServer(create_app(load_retriever(index_dir), config)) as live:
        yield live


@pytest.fixture(scope="module")
def unbatched_server(index_dir):
    with LiveServer(create_app(load_retriever(index_dir), ServerConfig(batching=False))) as live:
        yield live


def post_raw(url: str, content: bytes, headers=None) -> httpx.Response:
    return httpx.post(url + "/retrieve", content=content, headers={"content-type": "application/json", **(headers or {})}, timeout=30)


# -- wire format -----------------------------------------------------------------------------

def test_wire_format_with_scores(server, reference):
    r = post_raw(server.url, b'{"queries": ["capital of France", "who wrote Hamlet"], "topk": 2, "return_scores": true}')
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = json.loads(r.content)
    assert list(body) == ["result"] and len(body["result"]) == 2
    for entries, hits in zip(body["result"], reference.search(["capital of France", "who wrote Hamlet"], 2)):
        assert len(entries) == 2
        for entry, hit in zip(entries, hits):
            assert set(entry) == {"document", "score"}
            assert set(entry["document"]) == {"id", "contents"}
            assert entry["document"]["id"] == hit.doc_id
            assert entry["document"]["contents"] == f'"{hit.title}"\n{hit.text}'
            assert isinstance(entry["score"], float) and entry["score"] == pytest.approx(hit.score, abs=1e-5)
    assert body["result"][1][0]["document"]["contents"].startswith('"William Shakespeare"\n')


def test_wire_format_without_scores(server):
    # Search-R1's default (return_scores omitted = false) answers 500 there; bare documents here.
    for raw in (b'{"queries": ["capital of Japan"], "topk": 3, "return_scores": false}', b'{"queries": ["capital of Japan"]}'):
        r = post_raw(server.url, raw)
        assert r.status_code == 200, r.text
        result = json.loads(r.content)["result"]
        assert len(result) == 1 and len(result[0]) == 3  # topk omitted -> default 3
        for doc in result[0]:
            assert set(doc) == {"id", "contents"}
        assert result[0][0]["contents"].split("\n")[0] in ('"Tokyo"', '"Japan"')


def test_null_topk_uses_default(server):
    r = post_raw(server.url, b'{"queries": ["Mount Everest height"], "topk": null, "return_scores": true}')
    assert r.status_code == 200 and len(r.json()["result"][0]) == 3


def test_health_reports_index_and_cache(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["kind"] == "dense" and h["count"] == 203 and h["dimension"] == 384
    assert h["encoder"]["name"] == "all-MiniLM-L6-v2"
    assert {"hits", "misses", "size", "maxsize", "hit_rate"} <= set(h["cache"])
    assert h["batching"] is True


# -- limits: 4xx with a message, never 500 -----------------------------------------------------

@pytest.mark.parametrize(
    "raw, status, needle",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe\x00garbage", 400, "malformed JSON"),
        (b"[" * 3000 + b"]" * 3000, 400, "malformed JSON"),  # 6 kB > limit anyway -> 413
        (b"[]", 422, "JSON object"),
        (b"{}", 422, "missing field 'queries'"),
        (b'{"queries": "capital"}', 422, "must be a list"),
        (b'{"queries": []}', 422, "empty"),
        (b'{"queries": [""]}', 422, "queries[0] is empty"),
        (b'{"queries": ["ok", 3]}', 422, "queries[1] must be a string"),
        (b'{"queries": ["ok", null]}', 422, "queries[1] must be a string"),
        (json.dumps({"queries": ["x" * 201]}).encode(), 422, "too long"),
        (json.dumps({"queries": ["q"] * 17}).encode(), 422, "too many queries"),
        (b'{"queries": ["q"], "topk": 0}', 422, "between 1 and 20"),
        (b'{"queries": ["q"], "topk": 21}', 422, "between 1 and 20"),
        (b'{"queries": ["q"], "topk": 2.5}', 422, "'topk' must be an integer"),
        (b'{"queries": ["q"], "topk": true}', 422, "'topk' must be an integer"),
        (b'{"queries": ["q"], "topk": "3"}', 422, "'topk' must be an integer"),
        (b'{"queries": ["q"], "return_scores": "yes"}', 422, "'return_scores'"),
        (b'{"queries": ["q"], "topk": NaN}', 422, "'topk' must be an integer"),
    ],
)
def test_bad_requests_get_4xx(server, raw, status, needle):
    r = post_raw(server.url, raw)
    if len(raw) > 4096:
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        return
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_oversized_body_refused_from_content_length(server):
    # Declare 1 GB and send nothing: the answer must come from the header alone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
        reply = b""
        while b"too large" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "too large" in reply


def test_oversized_chunked_body_refused(server):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(server.url + "/retrieve", content=chunks(), timeout=30)
    assert r.status_code == 413


def test_unknown_route_and_method(server):
    assert httpx.get(server.url + "/nope").status_code == 404
    assert httpx.get(server.url + "/retrieve").status_code == 405


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"queries": st.one_of(st.lists(st.text(max_size=60), max_size=20), json_values)},
        optional={"topk": st.one_of(st.integers(-5, 30), json_values), "return_scores": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_fuzzed_bodies_never_5xx(server, body):
    r = post_raw(server.url, body)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code == 200:
        assert isinstance(r.json()["result"], list)
    else:
        assert isinstance(r.json()["detail"], str)


def test_server_keeps_serving_after_fuzzing(server):
    r = post_raw(server.url, b'{"queries": ["capital of Peru"], "topk": 1, "return_scores": true}')
    assert r.status_code == 200 and r.json()["result"][0][0]["document"]["id"] in ("102", "103")


# -- client ----------------------------------------------------------------------------------

QUERIES = [
    "capital of France", "who discovered radium", "largest planet", "river flowing into the Black Sea",
    "currency of Japan", "who painted Guernica", "symbol Fe element", "highest mountain in Africa",
    "author of Don Quixote", "language spoken in Brazil",
]


def same_hits(a, b):
    assert [[h.doc_id for h in row] for row in a] == [[h.doc_id for h in row] for row in b]
    for ra, rb in zip(a, b):
        for ha, hb in zip(ra, rb):
            assert (ha.title, ha.text) == (hb.title, hb.text)
            assert ha.score == pytest.approx(hb.score, abs=1e-5)


def test_sync_client_matches_in_process(server, reference):
    with RemoteRetriever(server.url) as remote:
        same_hits(remote.search(QUERIES, 4), reference.search(QUERIES, 4))
        assert remote.search([], 3) == []
        with pytest.raises(RetrievalRequestError, match="too long"):
            remote.search(["x" * 500], 3)


def test_client_chunks_large_batches(server, reference):
    # The server allows 16 queries per request; the client splits 40 into 3 requests.
    queries = [QUERIES[i % 10] + f" {i}" for i in range(40)]
    remote = RemoteRetriever(server.url + "/retrieve", max_queries_per_request=16)
    same_hits(remote.search(queries, 2), reference.search(queries, 2))
    same_hits(asyncio.run(remote.asearch(queries, 2)), reference.search(queries, 2))
    remote.close()


def test_200_concurrent_async_requests_match_in_process(server, reference):
    queries = [f"{QUERIES[i % 10]} {i % 37}" for i in range(200)]
    before = httpx.get(server.url + "/health").json()["batcher"]

    async def run():
        async with RemoteRetriever(server.url, max_connections=200) as remote:
            return await asyncio.gather(*(remote.asearch([q], 3) for q in queries))

    results = asyncio.run(run())
    same_hits([r[0] for r in results], reference.search(queries, 3))
    after = httpx.get(server.url + "/health").json()["batcher"]
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 200
    assert batches < requests  # concurrent requests were coalesced


def test_unbatched_server_matches(unbatched_server, reference):
    async def run():
        async with RemoteRetriever(unbatched_server.url) as remote:
            return await asyncio.gather(*(remote.asearch([q], 3) for q in QUERIES))

    same_hits([r[0] for r in asyncio.run(run())], reference.search(QUERIES, 3))
    assert httpx.get(unbatched_server.url + "/health").json()["batching"] is False


def test_token_required_except_health(index_dir):
    app = create_app(load_retriever(index_dir), ServerConfig(token="s3cret"))
    with LiveServer(app) as live:
        body = b'{"queries": ["capital of Chile"], "topk": 1}'
        assert post_raw(live.url, body).status_code == 401
        assert post_raw(live.url, body, {"Authorization": "Bearer wrong"}).status_code == 401
        assert post_raw(live.url, body, {"Authorization": "Basic s3cret"}).status_code == 401
        assert post_raw(live.url, body, {"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(live.url + "/health").status_code == 200
        assert RemoteRetriever(live.url, token="s3cret").search(["capital of Chile"], 1)[0][0].title in ("Chile", "Santiago")
        with pytest.raises(RetrievalRequestError, match="401"):
            RemoteRetriever(live.url, token="nope", retries=0).search(["x"], 1)


def test_client_retries_connection_errors_then_fails():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    remote = RemoteRetriever(f"http://127.0.0.1:{port}", retries=2, backoff=0.01, timeout=2)
    t0 = time.perf_counter()
    with pytest.raises(RetrievalRequestError, match="after 3 tries"):
        remote.search(["q"], 1)
    assert time.perf_counter() - t0 >= 0.03  # backoff 0.01 + 0.02 was slept


def test_client_retries_5xx_then_succeeds():
    """A real server that fails twice with 503, then answers: the client rides it out."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    calls = {"n": 0}
    app = FastAPI()

    @app.post("/retrieve")
    async def flaky():
        calls["n"] += 1
        if calls["n"] <= 2:
            return JSONResponse({"detail": "busy"}, status_code=503)
        return {"result": [[{"document": {"id": "7", "contents": '"T"\nbody'}, "score": 0.5}]]}

    with LiveServer(app) as live:
        hits = RemoteRetriever(live.url, retries=3, backoff=0.01).search(["q"], 1)
        assert calls["n"] == 3
        assert hits == [[pytest.importorskip("searchgym.retrieval").Hit("7", "T", "body", 0.5)]]
        calls["n"] = -10
        with pytest.raises(RetrievalRequestError, match="503"):
            RemoteRetriever(live.url, retries=1, backoff=0.01).search(["q"], 1)


@pytest.mark.slow
def test_cli_serve_binds_localhost_and_answers(index_dir):
    """`searchgym serve` end to end in a subprocess: prints its bind address, serves, stops."""
    import os
    import subprocess
    import sys

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, SEARCHGYM_TOKEN="tok", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchgym", "serve", "--index", str(index_dir), "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "micro-batching on" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}" in text and "bound to 127.0.0.1 only" in text, text
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                assert httpx.get(url + "/health", timeout=2).json()["count"] == 203
                break
            except httpx.TransportError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert post_raw(url, b'{"queries": ["capital of Spain"]}').status_code == 401  # token from env
        hits = RemoteRetriever(url, token="tok").search(["capital of Spain"], 1)
        assert hits[0][0].title in ("Spain", "Madrid")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_batcher_respects_max_batch_and_mixed_topk(index_dir, reference):
    app = create_app(load_retriever(index_dir), ServerConfig(max_batch=4, batch_wait_ms=20))
    queries = [f"{QUERIES[i % 10]} #{i}" for i in range(24)]
    ks = [1 + i % 3 for i in range(24)]  # mixed topk inside one coalesced batch

    async def run(url):
        async with RemoteRetriever(url) as remote:
            return await asyncio.gather(*(remote.asearch([q], k) for q, k in zip(queries, ks)))

    with LiveServer(app) as live:
        results = asyncio.run(run(live.url))
        stats = httpx.get(live.url + "/health").json()["batcher"]
    for q, k, res in zip(queries, ks, results):
        assert len(res[0]) == k
        same_hits(res, reference.search([q], k))
    assert stats["requests"] == 24 and stats["queries"] == 24
    assert stats["batches"] >= 6  # at most 4 queries per coalesced call
    assert stats["mean_batch_queries"] > 1  # ...and they were coalesced


class FailingRetriever:
    """Answers like a retriever until told to fail: a server-side fault mid-service."""

    kind = "failing"

    def __init__(self, inner):
        self.inner, self.fail = inner, False

    def search(self, queries, k):
        if self.fail:
            raise RuntimeError("index file vanished")
        return self.inner.search(queries, k)


@pytest.mark.parametrize("batching", [True, False])
def test_a_retriever_fault_is_a_500_and_the_server_keeps_serving(index_dir, batching):
    retriever = FailingRetriever(load_retriever(index_dir))
    with LiveServer(create_app(retriever, ServerConfig(batching=batching))) as live:
        assert post_raw(live.url, b'{"queries": ["capital of France"]}').status_code == 200
        retriever.fail = True
        assert post_raw(live.url, b'{"queries": ["capital of France"]}').status_code == 500
        retriever.fail = False
        r = post_raw(live.url, b'{"queries": ["capital of France"]}')
        assert r.status_code == 200 and len(r.json()["result"][0]) == 3
        assert httpx.get(live.url + "/retrieve").status_code == 405  # the other methods still routed
