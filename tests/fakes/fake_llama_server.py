#!/usr/bin/env python3
"""A stand-in for ``llama-server`` for router logic and fault-injection tests (stdlib only).

It takes llama-server's command line as the router builds it (``--model F --port P --host H
--ctx-size N --no-webui [--embeddings] [--threads N]``; unknown flags are ignored) and the API
key from ``$LLAMA_API_KEY``. ``GET /health`` is public (503 while "loading", then 200); the API
routes need ``Authorization: Bearer KEY``: ``POST /v1/chat/completions`` (JSON or SSE with
``"stream": true``), ``/v1/completions``, ``/v1/embeddings`` and ``GET /props``. ``--list-devices`` and
``--version`` answer as a CPU build of llama-server does (no device).

Fault knobs, read from the environment (a router's children inherit the router's environment):

``FAKE_LLAMA_READY_AFTER``            seconds before ``/health`` turns 200
``FAKE_LLAMA_READY_FILE``             ``/health`` is 503 until this file exists (a test's gate)
``FAKE_LLAMA_FAIL_START=1``           print an error line and exit 1 at start
``FAKE_LLAMA_CRASH_AFTER_REQUESTS=N`` answer N API requests, then exit 1 on the next one
``FAKE_LLAMA_IGNORE_SIGTERM=1``       ignore SIGTERM (the router must SIGKILL it)
``FAKE_LLAMA_TOKEN_DELAY``            seconds between SSE chunks
``FAKE_LLAMA_STALE_KEEPALIVE=1``      streams advertise keep-alive, but the connection is dead
                                      afterwards, as llama-server's are (see below)
``FAKE_LLAMA_LOG_LINES=N``            a chatty backend: a buffer-size line at start (like
                                      llama.cpp's load report) and N numbered lines per API
                                      request (``verbose: request R line L``)

By default a stream answers ``Connection: close``. llama-server instead answers streams with
chunked encoding and no ``Connection: close`` (keep-alive, as far as HTTP/1.1 says), then closes
the connection; a client that pooled it and reuses it before the close reaches it gets no answer.
``FAKE_LLAMA_STALE_KEEPALIVE=1`` makes that race certain: after a stream (unless the client asked
for ``Connection: close``) the connection stays open but stale, and the next request that arrives
on it is not answered: the fake closes every other stale connection, lets their closes land, then
closes this one. So a client sees exactly one failed request on a stale pooled connection, and a
fresh connection works.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = ["Hello", " from", " the", " fake", " llama", "."]
#: Printed (to the backend's log) for each request that arrived on a stale connection.
STALE_REQUEST_LINE = "fake: request on a stale keep-alive connection, not answered"


def _env_float(name: str) -> float:
    return float(os.environ.get(name) or 0)


class _State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.api_key = os.environ.get("LLAMA_API_KEY", "")
        self.ready_at = time.monotonic() + _env_float("FAKE_LLAMA_READY_AFTER")
        self.ready_file = os.environ.get("FAKE_LLAMA_READY_FILE")
        crash = os.environ.get("FAKE_LLAMA_CRASH_AFTER_REQUESTS")
        self.crash_after = int(crash) if crash else None
        self.token_delay = _env_float("FAKE_LLAMA_TOKEN_DELAY")
        self.log_lines = int(os.environ.get("FAKE_LLAMA_LOG_LINES") or 0)
        self.stale_keepalive = os.environ.get("FAKE_LLAMA_STALE_KEEPALIVE") == "1"
        self.stale: set[socket.socket] = set()  # connections a stream left open but dead
        self.requests = 0
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State
    _stale = False  # this connection carried a stream and is dead (FAKE_LLAMA_STALE_KEEPALIVE)

    def handle_one_request(self) -> None:
        if not self._stale:
            super().handle_one_request()
            return
        # The next request (or the client's close) on a connection a stream left behind: no
        # answer. Every other stale connection is closed first, and given a moment, so that a
        # client that retries finds them closed and opens a fresh connection.
        request = self.rfile.readline(65537)
        with self.state.lock:
            self.state.stale.discard(self.connection)
            others = list(self.state.stale) if request else []
            if request:
                self.state.stale.clear()
        if request:
            print(STALE_REQUEST_LINE, flush=True)
        for conn in others:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if others:
            time.sleep(0.05)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        sys.stdout.write("request: " + format % args + "\n")
        sys.stdout.flush()

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self, *, count: bool = True) -> bool:
        """Check the key and count the request; may exit the process (the crash knob)."""
        if self.headers.get("Authorization") != f"Bearer {self.state.api_key}":
            self._json(401, {"error": {"code": 401, "message": "Invalid API Key",
                                       "type": "authentication_error"}})
            return False
        if not count:
            return True
        with self.state.lock:
            self.state.requests += 1
            if self.state.crash_after is not None and self.state.requests > self.state.crash_after:
                print("fake crash: FAKE_LLAMA_CRASH_AFTER_REQUESTS reached", flush=True)
                os._exit(1)
            if self.state.log_lines:
                sys.stdout.write("".join(
                    f"verbose: request {self.state.requests} line {n}\n"
                    for n in range(self.state.log_lines)))
                sys.stdout.flush()
        return True

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/health":
            gated = self.state.ready_file and not os.path.exists(self.state.ready_file)
            if gated or time.monotonic() < self.state.ready_at:
                self._json(503, {"error": {"code": 503, "message": "Loading model"}})
            else:
                self._json(200, {"status": "ok"})
        elif self.path == "/props":
            # Not an inference request: the router reads it at start (is this port ours?),
            # so it does not count toward FAKE_LLAMA_CRASH_AFTER_REQUESTS.
            if self._authorized(count=False):
                self._json(200, {"model_path": self.state.args.model, "is_sleeping": False,
                                 "default_generation_settings": {"n_ctx": self.state.args.ctx_size}})
        else:
            self._json(404, {"error": {"code": 404, "message": "File Not Found"}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(400, {"error": {"code": 400, "message": "bad json"}})
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            self._json(404, {"error": {"code": 404, "message": "File Not Found"}})
            return
        if not self._authorized():
            return
        model = self.state.args.model
        if self.path == "/v1/embeddings":
            if not self.state.args.embeddings:
                self._json(501, {"error": {"code": 501, "message": "embeddings not enabled"}})
                return
            self._json(200, {"object": "list", "model": model, "data": [
                {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}]})
            return
        chat = self.path == "/v1/chat/completions"
        if body.get("stream"):
            self._stream(chat, model, _timings(body))
            return
        text = "".join(TOKENS)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": "stop"} if chat else
                  {"index": 0, "text": text, "finish_reason": "stop"})
        self._json(200, {"object": "chat.completion" if chat else "text_completion",
                         "model": model, "pid": os.getpid(), "choices": [choice],
                         "timings": _timings(body)})

    def _stream(self, chat: bool, model: str, timings: dict) -> None:
        # Stale keep-alive: chunked, no "Connection: close" unless the client asked for it.
        stale = self.state.stale_keepalive and not self.close_connection
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if stale:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        def send(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if stale else data)
            self.wfile.flush()

        for token in TOKENS:
            delta = {"delta": {"content": token}} if chat else {"text": token}
            chunk = {"object": "chat.completion.chunk" if chat else "text_completion",
                     "model": model, "choices": [{"index": 0, **delta, "finish_reason": None}]}
            if token is TOKENS[-1]:  # llama-server's last event carries its timings
                chunk["timings"] = timings
            send(f"data: {json.dumps(chunk)}\n\n".encode())
            if self.state.token_delay:
                time.sleep(self.state.token_delay)
        send(b"data: [DONE]\n\n")
        if stale:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self._stale = True
            with self.state.lock:
                self.state.stale.add(self.connection)


def _timings(body: dict) -> dict:
    """llama-server's ``timings`` of an answer: one prompt token per word of the request's
    prompt or messages, one generated token per :data:`TOKENS`, fixed times."""
    prompt = body.get("prompt") or [m.get("content") for m in body.get("messages") or []
                                    if isinstance(m, dict)]
    words = len(json.dumps(prompt).split())
    return {"cache_n": 0, "prompt_n": words, "prompt_ms": 2.0 * words,
            "predicted_n": len(TOKENS), "predicted_ms": 10.0 * len(TOKENS),
            "predicted_per_second": 100.0}


def main() -> None:
    # The router asks every engine what it sees; the fake answers as a CPU build does.
    if "--list-devices" in sys.argv[1:]:
        print("Available devices:", flush=True)
        return
    if "--version" in sys.argv[1:]:
        print("version: 0 (fake)\nbuilt with python for the tests", file=sys.stderr)
        return
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", "-m", default="")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ctx-size", "-c", type=int, default=4096)
    parser.add_argument("--embeddings", "--embedding", action="store_true")
    args, _unknown = parser.parse_known_args()
    if os.environ.get("FAKE_LLAMA_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("FAKE_LLAMA_FAIL_START") == "1":
        print("error: failed to load model (FAKE_LLAMA_FAIL_START)", flush=True)
        sys.exit(1)
    try:
        with open(args.model, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise OSError("bad magic")
    except OSError as exc:
        print(f"error: failed to load model '{args.model}': {exc}", flush=True)
        sys.exit(1)
    Handler.state = _State(args)
    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as exc:
        print(f"error: couldn't bind HTTP server socket: {exc}", flush=True)
        sys.exit(1)
    server.daemon_threads = True
    if os.environ.get("FAKE_LLAMA_LOG_LINES"):
        print("load_tensors:   CPU_Mapped model buffer size =    98.00 MiB", flush=True)
    print(f"main: server is listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
