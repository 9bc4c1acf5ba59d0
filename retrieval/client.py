"""``RemoteRetriever``: the ``Retriever`` protocol over HTTP (a searchgym or Search-R1 server).

Sync ``search`` and async ``asearch`` share one configuration; connections are pooled
(one ``httpx.Client``, one ``httpx.AsyncClient`` per event loop). Connection errors
(refused, reset, dropped mid-answer), timeouts and 500/502/503/504 answers are retried
(``tenacity``) with exponential backoff capped at ``max_backoff`` (retrieval is idempotent,
so a retried request cannot be answered twice); the defaults ride out a server restart of
~12 s. 4xx answers, malformed answers and exhausted retries raise ``RetrievalRequestError``
with the reason.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity import wait_exponential

from searchgym.retrieval.base import Hit, split_contents
from searchgym.retrieval.dense import check_queries

RETRY_STATUS = {500, 502, 503, 504}


class RetrievalRequestError(ValueError):
    """The server refused the request (4xx), or kept failing after every retry."""


class _Retryable(Exception):
    """A failed try worth another one: a transport error or a 5xx answer."""

    def __init__(self, response: httpx.Response | None = None, error: Exception | None = None):
        super().__init__(error or response)
        self.response = response
        self.error = error


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
        retries: int = 6,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
        max_connections: int = 100,
        max_queries_per_request: int = 512,
    ):
        url = url.rstrip("/")
        self.base_url = url[: -len("/retrieve")] if url.endswith("/retrieve") else url
        self.url = self.base_url + "/retrieve"
        if retries < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0:
            raise ValueError(
                f"retries, backoff and max_backoff must be >= 0 and timeout > 0, got retries={retries}, "
                f"backoff={backoff}, max_backoff={max_backoff}, timeout={timeout}"
            )
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # after failed try n (1-based): backoff * 2**(n-1), capped at max_backoff
        self._wait = wait_exponential(multiplier=backoff, max=max_backoff)
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
        """The hits of a 200 answer; ``RetrievalRequestError`` names what is malformed."""

        def bad(what: str) -> RetrievalRequestError:
            return RetrievalRequestError(f"{response.url}: unexpected response: {what}")

        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # not JSON, bad UTF-8, absurd nesting
            raise bad(f"not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(body, dict) or not isinstance(body.get("result"), list):
            raise bad("expected an object with a 'result' list")
        result = body["result"]
        if len(result) != n:
            raise RetrievalRequestError(f"{response.url}: asked {n} queries, got {len(result)} results")
        out = []
        for i, hits in enumerate(result):
            if not isinstance(hits, list):
                raise bad(f"result[{i}] is not a list")
            row = []
            for j, entry in enumerate(hits):
                where = f"result[{i}][{j}]"
                if not isinstance(entry, dict) or not isinstance(entry.get("document"), dict):
                    raise bad(f"{where} is not an object with a 'document' object")
                doc, score = entry["document"], entry.get("score")
                if not isinstance(doc.get("contents"), str):
                    raise bad(f"{where}.document.contents is not a string")
                if not isinstance(doc.get("id"), (str, int)) or isinstance(doc.get("id"), bool):
                    raise bad(f"{where}.document.id is not a string or integer")
                if isinstance(score, bool) or not isinstance(score, (int, float)):
                    raise bad(f"{where}.score is not a number")
                try:
                    score = float(score)
                except OverflowError:  # an integer with hundreds of digits
                    raise bad(f"{where}.score is out of range") from None
                title, text = split_contents(doc["contents"])
                row.append(Hit(str(doc["id"]), title, text, score))
            out.append(row)
        return out

    def _error(self, response: httpx.Response) -> RetrievalRequestError:
        try:
            body = response.json()
            detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
        except (ValueError, RecursionError):
            detail = response.text
        return RetrievalRequestError(f"{self.url}: HTTP {response.status_code}: {str(detail)[:500]}")

    @property
    def retry_window(self) -> float:
        """Total backoff before giving up: the longest server outage a call rides out
        (plus the time the tries themselves take)."""
        state = RetryCallState(None, None, (), {})
        total = 0.0
        for attempt in range(1, self.retries + 1):
            state.attempt_number = attempt
            total += self._wait(state)
        return total

    def _retrying(self, kind: type[Retrying] | type[AsyncRetrying]):
        """The retry policy: up to ``retries`` more tries of a retryable failure, then
        :meth:`_give_up`; any other exception (4xx, malformed answer) is raised at once."""
        return kind(stop=stop_after_attempt(self.retries + 1), wait=self._wait,
                    retry=retry_if_exception_type(_Retryable), retry_error_callback=self._give_up)

    def _chunks(self, queries: list[str]):
        step = self.max_queries_per_request
        return [queries[i : i + step] for i in range(0, len(queries), step)]

    # -- one try ------------------------------------------------------------------------
    def _answer(self, response: httpx.Response, n: int) -> list[list[Hit]]:
        """The hits of one try's answer; a 5xx is retryable, a 4xx is raised as it is."""
        if response.status_code == 200:
            return self._parse(response, n)
        if response.status_code in RETRY_STATUS:
            raise _Retryable(response=response)
        raise self._error(response)

    def _give_up(self, state: RetryCallState):
        """Every try failed: raise the last failure with how long the tries took."""
        failure = state.outcome.exception()
        tries = state.attempt_number
        if failure.error is not None:
            exc = failure.error
            raise RetrievalRequestError(
                f"{self.url}: {type(exc).__name__}: {exc or 'no detail'} (gave up after {tries} tries "
                f"over {time.monotonic() - state.start_time:.1f} s; is the server running? raise retries/max_backoff "
                "to wait longer)"
            ) from None
        raise RetrievalRequestError(f"{self._error(failure.response)} (gave up after {tries} tries)") from None

    # -- sync -----------------------------------------------------------------------------
    def _try_post(self, client: httpx.Client, queries: list[str], k: int) -> list[list[Hit]]:
        try:
            response = client.post(self.url, json=self._payload(queries, k))
        except httpx.TransportError as e:  # refused, reset, dropped mid-answer, timed out
            raise _Retryable(error=e) from None
        return self._answer(response, len(queries))

    def _post(self, queries: list[str], k: int) -> list[list[Hit]]:
        return self._retrying(Retrying)(self._try_post, self._sync_client(), queries, k)

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
    async def _atry_post(self, client: httpx.AsyncClient, queries: list[str], k: int) -> list[list[Hit]]:
        try:
            response = await client.post(self.url, json=self._payload(queries, k))
        except httpx.TransportError as e:
            raise _Retryable(error=e) from None
        return self._answer(response, len(queries))

    async def _apost(self, queries: list[str], k: int) -> list[list[Hit]]:
        return await self._retrying(AsyncRetrying)(self._atry_post, self._async_client(), queries, k)

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
