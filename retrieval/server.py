"""Search-R1-compatible retrieval server (FastAPI on uvicorn) with dynamic micro-batching.

``POST /retrieve`` takes ``{"queries": [str], "topk": int|null, "return_scores": bool}`` and
answers ``{"result": [...one list per query...]}``; an entry is
``{"document": {"id", "contents"}, "score": float}`` when ``return_scores`` is true and the
bare ``{"id", "contents"}`` document otherwise (Search-R1 answers 500 there; we don't).
``GET /health`` reports the index, the encoder, the query cache and batching counters.

Concurrent requests are queued and coalesced: the batcher takes everything pending (up to
``max_batch`` queries) and answers it with one ``retriever.search`` call per distinct
``topk``, in a worker thread, so the event loop never blocks on encoding or FAISS. The
window is adaptive: a request that finds the server idle and no other request on its way
is searched at once (no batching delay for a lone client); while a search runs, new
requests queue and form the next batch; a batch waits (at most ``batch_wait_ms``) only
for requests whose bodies are being read at that moment. With ``batching=False`` each request is its own call
(the Search-R1-style baseline the benchmark compares against).

Bad requests get a 4xx JSON ``{"detail": message}``, never a 500.

Hardening: binds 127.0.0.1 unless told otherwise and says so at start; an optional bearer
token (compared in constant time) guards every route but /health and is checked before a
byte of the body is read; bodies over ``max_body_bytes`` are refused from their
Content-Length (or cut at the limit when chunked); slow clients are cut by header/body
timeouts (uvicorn alone never times out a connection that sends nothing); no file is
opened for a request (request fields are only queries and numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Mapping

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from searchgym.retrieval.base import Hit
from searchgym.retrieval.index import load_retriever

TOKEN_ENV = "SEARCHGYM_TOKEN"


@dataclass
class ServerConfig:
    """Limits and batching knobs of the retrieval server."""

    default_topk: int = 3  # used when a request sends "topk": null or omits it
    max_topk: int = 100
    max_queries: int = 512  # per request
    max_query_chars: int = 4096
    max_body_bytes: int = 1 << 20
    batching: bool = True
    max_batch: int = 256  # queries per coalesced retriever call
    batch_wait_ms: float = 2.0  # longest a batch waits for requests still being read (adaptive window)
    token: str | None = None  # bearer token required on every route but /health
    # Slow-client limits (slowloris): a request's headers must arrive within
    # header_timeout_s of its first byte (or of the connection opening), its body within
    # body_timeout_s of the headers; an idle keep-alive connection closes after
    # keep_alive_timeout_s. A slow client costs one socket for at most that long and never
    # delays other clients (every connection is its own asyncio task).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_timeout_s: float = 5.0

    def __post_init__(self):
        for name in ("default_topk", "max_topk", "max_queries", "max_query_chars", "max_body_bytes", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"ServerConfig.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.default_topk > self.max_topk:
            raise ValueError(f"ServerConfig.default_topk {self.default_topk} exceeds max_topk {self.max_topk}")


class RequestError(Exception):
    """A client error, answered with ``status`` and ``{"detail": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _show(value) -> str:
    """A short JSON-ish rendering of a request value for an error message (never recurses
    into containers: a deeply nested value must not blow the stack)."""
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)[:40]
    if isinstance(value, str):
        return json.dumps(value[:30])
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


def _check_query(query: str, info: ValidationInfo) -> str:
    """One query of a request, against the server's limits (``info.context``: the
    ServerConfig). Its message follows ``queries[<i>]`` (see :func:`_refusal`)."""
    config: ServerConfig = info.context
    if not query.strip():
        raise PydanticCustomError("query_empty", "is empty")
    if len(query) > config.max_query_chars:
        raise PydanticCustomError("query_too_long",
                                  f"is too long: {len(query)} > {config.max_query_chars} characters")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"); tokenizers do not
        raise PydanticCustomError("query_unicode", "is not valid Unicode (lone surrogate escape)") from None
    return query


class RetrieveRequest(BaseModel):
    """The body of ``POST /retrieve`` (Search-R1's schema), validated against the server's
    limits (pass the ServerConfig as the validation ``context``). Strict: JSON types as
    sent (``"3"`` is not a topk, ``1`` is not true); unknown fields are ignored."""

    model_config = ConfigDict(strict=True, frozen=True)

    queries: list[Annotated[StrictStr, AfterValidator(_check_query)]]
    topk: StrictInt | None = None  # None: the server's default_topk
    return_scores: StrictBool = False

    @field_validator("queries", mode="before")
    @classmethod
    def _query_count(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list):  # another type fails the list check with its own message
            if not value:
                raise PydanticCustomError("queries_empty", "'queries' is empty")
            if len(value) > info.context.max_queries:
                raise PydanticCustomError(
                    "queries_too_many",
                    f"too many queries in 'queries': {len(value)} > {info.context.max_queries} per request")
        return value

    @field_validator("topk")
    @classmethod
    def _topk_range(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not 1 <= value <= info.context.max_topk:
            raise PydanticCustomError("topk_range", f"'topk' must be between 1 and {info.context.max_topk}, got {value}")
        return value


def _refusal(error: Mapping[str, Any]) -> str:
    """The one-line message of a request's first validation error (fields in the order
    queries, topk, return_scores; queries in order), naming the field."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    if kind == "model_type":
        return f"request body must be a JSON object, got {type(value).__name__}"
    if kind == "missing":
        return "missing field 'queries' (a list of strings)"
    if loc[0] == "queries":
        if len(loc) == 1:
            return f"'queries' must be a list of strings, got {type(value).__name__}" if kind == "list_type" \
                else error["msg"]
        if kind == "string_type":
            return f"queries[{loc[1]}] must be a string, got {type(value).__name__}"
        return f"queries[{loc[1]}] {error['msg']}"
    if loc[0] == "topk":
        return error["msg"] if kind == "topk_range" else f"'topk' must be an integer or null, got {_show(value)}"
    return f"'return_scores' must be true or false, got {_show(value)}"


def parse_request(payload, config: ServerConfig) -> tuple[list[str], int, bool]:
    """Validate a decoded ``/retrieve`` body (:class:`RetrieveRequest`); returns
    (queries, topk, return_scores) or raises ``RequestError`` (422) naming the field."""
    try:
        request = RetrieveRequest.model_validate(payload, context=config)
    except ValidationError as exc:
        raise RequestError(422, _refusal(exc.errors()[0])) from None
    topk = config.default_topk if request.topk is None else request.topk
    return list(request.queries), topk, request.return_scores


def decode_request(body: bytes, config: ServerConfig) -> tuple[list[str], int, bool]:
    """Decode and validate a raw ``/retrieve`` body; raises ``RequestError`` (400/422)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise RequestError(400, f"malformed JSON body: {str(exc)[:200]}") from None
    return parse_request(payload, config)


def _document(hit: Hit) -> dict:
    return {"id": hit.doc_id, "contents": f'"{hit.title}"\n{hit.text}'}


def format_result(results: list[list[Hit]], return_scores: bool) -> dict:
    """Search-R1's response body."""
    if return_scores:
        return {"result": [[{"document": _document(h), "score": h.score} for h in hits] for hits in results]}
    return {"result": [[_document(h) for h in hits] for hits in results]}


class RetrievalApp(FastAPI):
    """The FastAPI app, except that ``POST /retrieve`` goes straight to ``retrieve``
    (``handler(request) -> Response``), past the middleware stack and the router: with them
    FastAPI spent as long per request as the handler itself (profiled at 64 clients). An
    exception the handler lets out reaches uvicorn, which answers 500 as the middleware would."""

    retrieve = None

    async def __call__(self, scope, receive, send) -> None:
        if self.retrieve is not None and scope["type"] == "http" and scope["path"] == "/retrieve" \
                and scope["method"] == "POST":
            response = await self.retrieve(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class ServerShuttingDown(RuntimeError):
    """Answered as 503 (retryable) to requests still queued when the server stops."""


class MicroBatcher:
    """Coalesces concurrent ``submit`` calls into few ``retriever.search`` calls.

    Requests wait in a deque; one loop task takes everything pending (whole requests, up
    to ``max_batch`` queries; a larger single request goes alone) and runs it in the
    executor thread; whatever arrives meanwhile is the next batch. Adaptive window: before
    a batch that is not full, the loop waits (at most ``wait_s``) only while some request
    is between ``arriving()`` (its handler started) and ``submit`` (its body parsed), i.e.
    a batch partner is known to be seconds-fractions away; otherwise it flushes at once.
    """

    def __init__(self, retriever, executor: ThreadPoolExecutor, max_batch: int, wait_s: float):
        self.retriever = retriever
        self.executor = executor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._pending: deque = deque()
        self._pending_queries = 0
        self._incoming = 0  # requests whose handler started but that are not submitted yet
        self._busy = False  # a search is running (batch or lone request)
        self._event: asyncio.Event | None = None
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.batched_queries = 0
        self.batched_requests = 0

    def start(self) -> None:
        self._event = asyncio.Event()
        self._arrival = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            fut = self._pending.popleft()[2]
            if not fut.done():
                fut.set_exception(ServerShuttingDown("server shutting down; retry"))

    @contextlib.contextmanager
    def arriving(self):
        """Mark a request on its way (its body is being read) for the duration of the block;
        a batch about to start waits for such requests (at most ``wait_s``)."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            if self._arrival is not None:
                self._arrival.set()

    async def submit(self, queries: list[str], k: int) -> list[list[Hit]]:
        loop = asyncio.get_running_loop()
        if not self._busy and not self._pending and self._incoming == 0:
            # Idle and nobody else on the way: search at once, without the hop through the
            # batcher task (a lone client then pays what the unbatched server pays).
            self._busy = True
            self.batches += 1
            self.batched_queries += len(queries)
            self.batched_requests += 1
            try:
                return (await loop.run_in_executor(self.executor, self._execute, [(queries, k, None)]))[0]
            finally:
                self._busy = False
                if self._pending:
                    self._event.set()
        fut = loop.create_future()
        self._pending.append((queries, k, fut))
        self._pending_queries += len(queries)
        self._event.set()
        self._arrival.set()
        return await fut

    async def _gather(self, loop) -> None:
        """The adaptive window: wait while a request is being read and the batch has room."""
        deadline = loop.time() + self.wait_s
        while self._incoming > 0 and self._pending_queries < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), left)
            except asyncio.TimeoutError:
                return

    def _execute(self, batch: list) -> list[list[list[Hit]]]:
        # One search per distinct k (normally one): mixing k in one call would change
        # results for approximate indexes.
        out: list = [None] * len(batch)
        by_k: dict[int, list[int]] = {}
        for i, (_, k, _) in enumerate(batch):
            by_k.setdefault(k, []).append(i)
        for k, members in by_k.items():
            flat = [q for i in members for q in batch[i][0]]
            hits = self.retriever.search(flat, k)
            pos = 0
            for i in members:
                n = len(batch[i][0])
                out[i] = hits[pos : pos + n]
                pos += n
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._event.wait()
            if not self._pending or self._busy:  # a lone request's search wakes us when it ends
                self._event.clear()
                continue
            if self.wait_s > 0 and self._incoming > 0 and self._pending_queries < self.max_batch:
                await self._gather(loop)
            batch, n = [], 0
            while self._pending and (not batch or n + len(self._pending[0][0]) <= self.max_batch):
                item = self._pending.popleft()
                batch.append(item)
                n += len(item[0])
            self._pending_queries -= n
            if not self._pending:
                self._event.clear()
            batch = [item for item in batch if not item[2].done()]  # drop requests whose client left
            if not batch:
                continue
            self.batches += 1
            self.batched_queries += sum(len(item[0]) for item in batch)
            self.batched_requests += len(batch)
            self._busy = True
            try:
                results = await loop.run_in_executor(self.executor, self._execute, batch)
            except Exception as exc:  # a server fault: every request of the batch gets it
                for item in batch:
                    if not item[2].done():
                        item[2].set_exception(exc)
                continue
            finally:
                self._busy = False
            for item, res in zip(batch, results):
                if not item[2].done():
                    item[2].set_result(res)

    def stats(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.batched_requests,
            "queries": self.batched_queries,
            "mean_batch_queries": (self.batched_queries / self.batches) if self.batches else 0.0,
        }


def create_app(retriever, config: ServerConfig | None = None):
    """The FastAPI app serving ``retriever`` (any ``Retriever``; dense ones report encoder
    and cache stats on /health)."""
    config = config or ServerConfig()
    token = config.token.encode("utf-8") if config.token else None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="searchgym-retrieve")
    batcher = MicroBatcher(retriever, executor, config.max_batch, config.batch_wait_ms / 1000.0)

    @asynccontextmanager
    async def lifespan(app):
        if config.batching:
            batcher.start()
        # Warm the encoder so the first request does not pay for lazy initialisation.
        encoder = getattr(retriever, "encoder", None)
        if encoder is not None:
            await asyncio.get_running_loop().run_in_executor(executor, encoder.encode_queries, ["warm up"])
        try:
            yield
        finally:
            await batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = RetrievalApp(title="searchgym retrieval", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.batcher = batcher
    app.state.retriever = retriever

    def error(status: int, message: str, headers=None):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        # Constant-time comparison: the answer's timing must not reveal a token prefix.
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8"), token)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise RequestError(400, f"invalid Content-Length header {length[:40]!r}") from None
            if declared > config.max_body_bytes:  # refused before a byte of the body is read
                raise RequestError(413, f"request body too large: {declared} > {config.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:  # chunked bodies declare no length
                raise RequestError(413, f"request body too large: over {config.max_body_bytes} bytes")
        return bytes(body)

    @app.post("/retrieve")  # the route other methods are refused by (405); POST never reaches it
    async def retrieve(request: Request):
        if not authorized(request):
            return error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            with batcher.arriving() if config.batching else contextlib.nullcontext():
                try:
                    body = await asyncio.wait_for(read_body(request), config.body_timeout_s)
                except asyncio.TimeoutError:
                    raise RequestError(408, f"request body not received within {config.body_timeout_s:g} s") from None
                queries, topk, return_scores = decode_request(body, config)
        except RequestError as exc:
            # A body left unread (413, 408) must not be drained: close the connection.
            headers = {"Connection": "close"} if exc.status in (408, 413) else None
            return error(exc.status, exc.message, headers)
        except ClientDisconnect:
            return error(400, "client disconnected while sending the body", {"Connection": "close"})
        try:
            if config.batching:
                results = await batcher.submit(queries, topk)
            else:
                results = await asyncio.get_running_loop().run_in_executor(executor, retriever.search, queries, topk)
        except ServerShuttingDown as exc:
            return error(503, str(exc))  # the client retries against the restarted server
        body = json.dumps(format_result(results, return_scores), ensure_ascii=False).encode("utf-8")
        return Response(body, media_type="application/json")

    app.retrieve = retrieve

    @app.get("/health")
    async def health():
        stats = retriever.stats() if hasattr(retriever, "stats") else {"kind": getattr(retriever, "kind", "unknown")}
        stats.update(status="ok", batching=config.batching, max_batch=config.max_batch, batcher=batcher.stats())
        return stats

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return error(404, f"no route {request.url.path}; use POST /retrieve or GET /health")

    return app


LINGER_S = 2.0  # how long a connection refused mid-body keeps discarding before it is reset


class _LingeringTransport:
    """The real transport, except that ``close`` while the client is still sending (a body
    refused with 413/408, trickled headers) half-closes instead: our answer is flushed, then
    whatever the client still sends is discarded until it hangs up or ``LINGER_S`` passes.
    A plain close with unread bytes makes the kernel send a TCP reset, and the client would
    see "connection reset" instead of the answer (RFC 9112 section 9.6, "lingering close")."""

    def __init__(self, transport, protocol):
        self._transport = transport
        self._protocol = protocol
        self._closing = False

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        transport, proto = self._transport, self._protocol
        state, (unparsed, _) = proto.conn.their_state, proto.conn.trailing_data
        still_sending = state is h11.SEND_BODY or (state is h11.IDLE and bool(unparsed))  # mid-body, mid-headers
        if transport.is_closing() or not still_sending or not transport.can_write_eof():
            transport.close()
            return
        proto.lingering = True
        transport.resume_reading()  # flow control may have paused it at the high-water mark
        transport.write_eof()  # sent after the buffered answer
        proto.loop.call_later(LINGER_S, transport.close)


def _hardened_h11_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol plus (1) a request-header deadline, which uvicorn lacks: a
    connection that sends nothing, or trickles its headers, is answered 408 and closed
    ``header_timeout_s`` after it opened (or after the first byte of its next request);
    (2) lingering close when a request is refused before its body was read."""
    reply = json.dumps({"detail": f"request headers not received within {header_timeout_s:g} s"}).encode()
    timeout_response = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(reply)}\r\n\r\n".encode() + reply
    )

    class HardenedH11Protocol(H11Protocol):
        _header_timer = None
        lingering = False  # set by _LingeringTransport.close: input is discarded from then on

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.transport = _LingeringTransport(transport, self)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.lingering:
                return  # discarded: the answer is already sent
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # first bytes of a new request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # headers complete: the app's body timeout takes over

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(timeout_response)
                self.transport.close()

    return HardenedH11Protocol


def uvicorn_options(config: ServerConfig) -> dict:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run`` that apply ``config``'s
    slow-client limits (use them whenever you run ``create_app``'s app yourself)."""
    return {
        "http": _hardened_h11_protocol(config.header_timeout_s),
        "timeout_keep_alive": config.keep_alive_timeout_s,
    }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(index_dir, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None,
          log_level: str = "warning", cache_size: int = 10_000) -> None:
    """Load ``index_dir`` and serve it until interrupted."""
    config = config or ServerConfig()
    if config.token is None and os.environ.get(TOKEN_ENV):
        config.token = os.environ[TOKEN_ENV]
    retriever = load_retriever(index_dir, cache_size=cache_size)
    desc = f"{retriever.kind} index {index_dir} ({retriever.count} docs"
    encoder = getattr(retriever, "encoder", None)
    desc += f", {encoder.name})" if encoder is not None else ")"
    print(f"searchgym serve: {desc} on http://{host}:{port} (POST /retrieve, GET /health)", flush=True)
    if _is_loopback(host):
        print(f"searchgym serve: bound to {host} only; pass --host 0.0.0.0 to accept remote clients", flush=True)
    elif config.token is None:
        print(f"searchgym serve: WARNING: listening on {host} without a token (--token or ${TOKEN_ENV})",
              file=sys.stderr, flush=True)
    print(f"searchgym serve: micro-batching {'on' if config.batching else 'off'}; limits {asdict(config) | {'token': bool(config.token)}}",
          flush=True)
    uvicorn.run(create_app(retriever, config), host=host, port=port, log_level=log_level, access_log=False,
                **uvicorn_options(config))
