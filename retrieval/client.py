"""``RemoteRetriever``: the ``Retriever`` protocol over HTTP (a searchgym or Search-R1 server).

Sync ``search`` and async ``asearch`` share one configuration; connections are pooled
(one ``httpx.Client``, one ``httpx.AsyncClient`` per event loop). Connection errors,
timeouts and 5xx answers are retried with exponential backoff; 4xx answers raise
``RetrievalRequestError`` with the server's message at once.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from searchgym.retrieval.base import Hit, split_contents
from searchgym.retrieval.dense import check_queries

RETRY_STATUS = {500, 502, 503, 504}


class RetrievalRequestError(ValueError):
    """The server refused the request (4xx), or kept failing after every retry."""


class RemoteRetriever:
    """Retriever backed by a ``POST /retrieve`` endpoint.

    ``url`` is the server root (``http://127.0.0.1:8000``) or the full ``/retrieve`` URL.
    Large query lists are sent in chunks of ``max_queries_per_request``.
    """

    kind = "remote"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_connections: int = 100,
        max_queries_per_request: int = 512,
    ):
        url = url.rstrip("/")
        self.base_url = url[: -len("/retrieve")] if url.endswith("/retrieve") else url
        self.url = self.base_url + "/retrieve"
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        self.retries = retries
        self.backoff = backoff
        self.max_queries_per_request = max_queries_per_request
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(timeout)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.Client | None = None
        self._aclients: dict[int, httpx.AsyncClient] = {}
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------
    def _sync_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(headers=self._headers, timeout=self._timeout, limits=self._limits)
            return self._client

    def _async_client(self) -> httpx.AsyncClient:
        # An AsyncClient is bound to the loop that first used it.
        loop = asyncio.get_running_loop()
        client = self._aclients.get(id(loop))
        if client is None or client.is_closed:
            client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=self._limits)
            self._aclients[id(loop)] = client
        return client

    def _payload(self, queries: list[str], k: int) -> dict:
        return {"queries": queries, "topk": int(k), "return_scores": True}

    @staticmethod
    def _parse(response: httpx.Response, n: int) -> list[list[Hit]]:
        try:
            result = response.json()["result"]
            out = []
            for hits in result:
                row = []
                for entry in hits:
                    doc = entry["document"]
                    title, text = split_contents(doc["contents"])
                    row.append(Hit(str(doc["id"]), title, text, float(entry["score"])))
                out.append(row)
        except (ValueError, KeyError, TypeError) as exc:
            raise RetrievalRequestError(f"{response.url}: unexpected response ({type(exc).__name__}: {exc})") from None
        if len(out) != n:
            raise RetrievalRequestError(f"{response.url}: asked {n} queries, got {len(out)} results")
        return out

    def _error(self, response: httpx.Response) -> RetrievalRequestError:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        return RetrievalRequestError(f"{self.url}: HTTP {response.status_code}: {str(detail)[:500]}")

    def _chunks(self, queries: list[str]):
        step = self.max_queries_per_request
        return [queries[i : i + step] for i in range(0, len(queries), step)]

    # -- sync -----------------------------------------------------------------------------
    def _outcome(self, attempt: int, n: int, response=None, exc: Exception | None = None):
        """One attempt's result: the parsed hits, or ``None`` to retry after a backoff.

        Raises when the tries are used up or the answer is not retryable (4xx)."""
        last = attempt == self.retries
        if exc is not None:
            if last:
                raise RetrievalRequestError(f"{self.url}: {type(exc).__name__}: {exc} (after {attempt + 1} tries)") from None
            return None
        if response.status_code == 200:
            return self._parse(response, n)
        if response.status_code not in RETRY_STATUS or last:
            raise self._error(response)
        return None

    def _post(self, queries: list[str], k: int) -> list[list[Hit]]:
        client = self._sync_client()
        for attempt in range(self.retries + 1):
            try:
                response, exc = client.post(self.url, json=self._payload(queries, k)), None
            except httpx.TransportError as e:
                response, exc = None, e
            hits = self._outcome(attempt, len(queries), response, exc)
            if hits is not None:
                return hits
            time.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query from the server (blocking)."""
        queries = check_queries(queries, k)
        return [hits for chunk in self._chunks(queries) for hits in self._post(chunk, k)]

    def health(self) -> dict:
        response = self._sync_client().get(self.base_url + "/health")
        if response.status_code != 200:
            raise self._error(response)
        return response.json()

    # -- async ----------------------------------------------------------------------------
    async def _apost(self, queries: list[str], k: int) -> list[list[Hit]]:
        client = self._async_client()
        for attempt in range(self.retries + 1):
            try:
                response, exc = await client.post(self.url, json=self._payload(queries, k)), None
            except httpx.TransportError as e:
                response, exc = None, e
            hits = self._outcome(attempt, len(queries), response, exc)
            if hits is not None:
                return hits
            await asyncio.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")

    async def asearch(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Async ``search``; chunks of a large batch are sent concurrently."""
        queries = check_queries(queries, k)
        parts = await asyncio.gather(*(self._apost(chunk, k) for chunk in self._chunks(queries)))
        return [hits for part in parts for hits in part]

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pooled sync connections (async clients: ``aclose``)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._aclients.pop(id(loop), None)
        if client is not None:
            await client.aclose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
        self.close()
