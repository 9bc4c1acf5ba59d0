"""The server's adaptive batching window against a real uvicorn on 127.0.0.1 (real FAISS,
real MiniLM): no delay for a lone client, coalescing under 64 concurrent clients, a batch
that waits for a request whose body is still arriving, and answers identical to the
in-process retriever's in every case."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import torch

from searchgym.retrieval import load_retriever
from searchgym.retrieval.server import ServerConfig, create_app

from live_server import LiveServer

torch.set_num_threads(1)

QUERIES = ["capital of France", "who wrote Hamlet", "Mount Everest height", "largest ocean", "speed of light",
           "inventor of the telephone", "capital of Japan", "tallest building"]


def expected(reference, queries, k=3):
    return [[h.doc_id for h in hits] for hits in reference.search(queries, k)]


def ids(body) -> list[list[str]]:
    return [[d["document"]["id"] for d in hits] for hits in body["result"]]


@pytest.fixture(scope="module")
def slow_window_server(index_dir):
    """A batched server whose window is long (2 s): a lone request that waited for it would show."""
    with LiveServer(create_app(load_retriever(index_dir), ServerConfig(batch_wait_ms=2000.0))) as live:
        yield live


def test_lone_client_is_not_delayed_by_the_window(slow_window_server, reference):
    url = slow_window_server.url
    before = httpx.get(url + "/health").json()["batcher"]
    with httpx.Client(timeout=30) as client:
        for q in QUERIES:
            t0 = time.perf_counter()
            r = client.post(url + "/retrieve", json={"queries": [q], "topk": 3, "return_scores": True})
            took = time.perf_counter() - t0
            assert r.status_code == 200 and ids(r.json()) == expected(reference, [q])
            assert took < 1.0, f"a lone request took {took:.2f} s: it waited for the 2 s window"
    after = httpx.get(url + "/health").json()["batcher"]
    assert after["batches"] - before["batches"] == len(QUERIES) == after["requests"] - before["requests"]


def test_batch_waits_for_a_request_still_being_read(slow_window_server, reference):
    """Request A's headers and half its body are in; B arrives complete. The batch waits
    for A (inside the window) and answers both in one search."""
    url = slow_window_server.url
    before = httpx.get(url + "/health").json()["batcher"]
    body_a = json.dumps({"queries": ["who wrote Hamlet"], "topk": 3, "return_scores": True}).encode()
    sock = socket.create_connection(("127.0.0.1", slow_window_server.port))
    try:
        sock.sendall(b"POST /retrieve HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     + f"content-length: {len(body_a)}\r\n\r\n".encode() + body_a[:10])
        time.sleep(0.3)  # A's handler is now reading its body
        with httpx.Client(timeout=30) as client:
            import threading

            out = {}
            t = threading.Thread(target=lambda: out.setdefault("b", client.post(
                url + "/retrieve", json={"queries": ["capital of France"], "topk": 3, "return_scores": True})))
            t.start()
            time.sleep(0.3)  # B is queued, the batch is waiting for A
            sock.sendall(body_a[10:])
            t.join(30)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        head, payload = reply.split(b"\r\n\r\n", 1)
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(payload) < length:
            payload += sock.recv(65536)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert ids(json.loads(payload)) == expected(reference, ["who wrote Hamlet"])
    assert out["b"].status_code == 200 and ids(out["b"].json()) == expected(reference, ["capital of France"])
    after = httpx.get(url + "/health").json()["batcher"]
    assert after["requests"] - before["requests"] == 2 and after["batches"] - before["batches"] == 1


async def _concurrent(url: str, n_clients: int, per_client: int):
    """``n_clients`` closed-loop clients, each sending ``per_client`` one-query requests."""
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def worker(c):
            got = []
            for j in range(per_client):
                q = f"{QUERIES[(c + j) % len(QUERIES)]} {c % 5}"
                r = await client.post(url + "/retrieve", json={"queries": [q], "topk": 3, "return_scores": True})
                assert r.status_code == 200, r.text
                got.append((q, ids(r.json())[0]))
            return got
        return [x for part in await asyncio.gather(*(worker(c) for c in range(n_clients))) for x in part]


@pytest.mark.parametrize("n_clients", [1, 64])
def test_concurrent_clients_get_the_in_process_answers(index_dir, reference, n_clients):
    with LiveServer(create_app(load_retriever(index_dir), ServerConfig())) as live:
        got = asyncio.run(_concurrent(live.url, n_clients, per_client=3 if n_clients > 1 else 12))
        stats = httpx.get(live.url + "/health").json()["batcher"]
    for q, doc_ids in got:
        assert doc_ids == expected(reference, [q])[0], q
    assert stats["requests"] == len(got)
    if n_clients == 1:
        assert stats["batches"] == stats["requests"]  # nobody to wait for: one search per request
    else:
        assert stats["batches"] < stats["requests"]  # concurrent requests were coalesced
