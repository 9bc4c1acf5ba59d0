"""A real uvicorn server in a background thread, for the retrieval server tests."""

from __future__ import annotations

import socket
import threading
import time


class LiveServer:
    """A real uvicorn server in a background thread of this process, on a free 127.0.0.1
    port (same process, so a test can watch what the server does). ``config``: the
    ``ServerConfig`` whose timeouts uvicorn should apply (``uvicorn_options``)."""

    def __init__(self, app, config=None):
        import uvicorn

        from searchgym.retrieval.server import uvicorn_options

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        opts = uvicorn_options(config) if config is not None else {}
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, **opts))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
