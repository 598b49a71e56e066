#!/usr/bin/env python3
"""A stand-in for ``llama-server`` that streams OpenAI-shaped SSE at a set rate (stdlib only).

On a CPU a real llama-server makes a token every 10–25 ms, too slowly to show what the proxy
costs per token; a GPU makes one every 2–4 ms. This process streams as fast as asked (up to
thousands of tokens per second per stream) so that the proxy's own cost shows, and it runs as
its own process so that its CPU is never the Jupyter server's.

It takes llama-server's command line as the router builds it (``--model F --port P --host H``;
other flags are ignored) and the API key from ``$LLAMA_API_KEY``, so the router can run it as a
backend; ``python -m benchmarks.fast_upstream --port P`` runs it by hand. Routes: ``GET
/health`` (public), ``GET /props``, ``GET /stats`` and ``POST /v1/chat/completions`` or
``/v1/completions``, which answer like llama-server: JSON at once, or with ``"stream": true`` a
chunked SSE stream of ``max_tokens`` content events, one final event (finish reason, usage,
``timings.predicted_n``) and ``data: [DONE]``; after a stream it closes the connection, as
llama-server does. The rate of a stream is the request's ``"x_tokens_per_s"`` (default
``--tokens-per-s``); every event names the model as llama-server does, by its file path, so
the proxy has a name to rewrite.

Made not to be the bottleneck: one thread and a ``select`` loop (timeouts in microseconds,
where an epoll-based asyncio loop rounds up to whole milliseconds), every event of a stream
built once and repeated, and a schedule rather than a sleep per token: token ``j`` of a stream
is due ``j / rate`` seconds after its request, and at each wake-up a stream gets every token due
by then in one write. While the process keeps up that is one token per write, as from
llama-server; when it falls behind (or the reader applies backpressure), writes carry several
tokens and the rate still holds. The benchmark measures it direct to show that it does.
``GET /stats`` counts connections, requests, streams started, finished and cut by the client,
and the writes and tokens sent, so a test can see that a stream was abandoned or a connection
reused.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time

_HEAD_LIMIT = 1 << 16
#: Tokens one write may carry: a stream asked for more than the process can send gets bounded
#: writes (and a lower rate) rather than one huge buffer.
_MOST_PER_WRITE = 256
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


class _Conn:
    __slots__ = ("sock", "inbuf", "out", "stream", "close_after")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = b""
        self.stream: _Stream | None = None
        self.close_after = False  # close once ``out`` is sent


class _Stream:
    """One SSE answer in progress: its events, its schedule and how far it got."""

    __slots__ = ("conn", "chunk", "tail", "start", "interval", "total", "sent")

    def __init__(self, conn: _Conn, chunk: bytes, tail: bytes, start: float, rate: float,
                 total: int) -> None:
        self.conn, self.chunk, self.tail = conn, chunk, tail
        self.start, self.interval, self.total, self.sent = start, 1.0 / rate, total, 0

    def next_due(self) -> float:
        return self.start + self.sent * self.interval


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FastUpstream:
    def __init__(self, sock: socket.socket, model: str, api_key: str, rate: float) -> None:
        self.listener = sock
        self.model = model
        self.api_key = api_key
        self.rate = rate
        self.conns: dict[socket.socket, _Conn] = {}
        self.streams: list[_Stream] = []
        self.stats = {"connections": 0, "requests": 0, "streams": 0, "finished": 0,
                      "cut_by_client": 0, "writes": 0, "tokens": 0}
        self._model_json = json.dumps(model)

    # ------------------------------------------------------------------ loop
    def serve_forever(self) -> None:
        self.listener.setblocking(False)
        while True:
            due = min((s.next_due() for s in self.streams if not s.conn.out), default=None)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            readers = [self.listener, *self.conns]
            writers = [c.sock for c in self.conns.values() if c.out]
            r, w, _ = select.select(readers, writers, [], timeout)
            for sock in r:
                if sock is self.listener:
                    self._accept()
                else:
                    self._readable(sock)
            for sock in w:
                conn = self.conns.get(sock)
                if conn is not None:
                    self._flush(conn)
            if self.streams:
                self._emit(time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock] = _Conn(sock)
            self.stats["connections"] += 1

    def _readable(self, sock: socket.socket) -> None:
        conn = self.conns.get(sock)
        if conn is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn, cut=True)
            return
        if conn.stream is not None:
            return  # bytes after a streamed request: ignored, as llama-server does
        conn.inbuf += data
        while conn.stream is None and not conn.close_after:
            request = self._take_request(conn)
            if request is None:
                break
            self._answer(conn, *request)
        if len(conn.inbuf) > _HEAD_LIMIT and b"\r\n\r\n" not in conn.inbuf:
            self._drop(conn, cut=False)

    @staticmethod
    def _take_request(conn: _Conn) -> tuple[str, str, dict[str, str], bytes] | None:
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = conn.inbuf[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if len(conn.inbuf) < end + 4 + length:
            return None
        body = conn.inbuf[end + 4:end + 4 + length]
        conn.inbuf = conn.inbuf[end + 4 + length:]
        method, _, rest = lines[0].partition(" ")
        path = rest.split(" ", 1)[0]
        return method, path, headers, body

    # ------------------------------------------------------------------ answers
    def _answer(self, conn: _Conn, method: str, path: str, headers: dict[str, str],
                body: bytes) -> None:
        close = headers.get("connection", "").lower() == "close"
        if method == "GET" and path == "/health":
            self._json(conn, 200, {"status": "ok"}, close)
            return
        if headers.get("authorization") != f"Bearer {self.api_key}":
            self._json(conn, 401, {"error": {"code": 401, "message": "Invalid API Key",
                                             "type": "authentication_error"}}, close)
            return
        if method == "GET" and path == "/props":
            self._json(conn, 200, {"model_path": self.model, "is_sleeping": False,
                                   "total_slots": 1024,
                                   "default_generation_settings": {"n_ctx": 4096}}, close)
            return
        if method == "GET" and path == "/stats":
            self._json(conn, 200, {**self.stats, "active": len(self.streams)}, close)
            return
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(conn, 404, {"error": {"code": 404, "message": "File Not Found"}}, close)
            return
        try:
            req = json.loads(body or b"{}")
            total = int(req.get("max_tokens") or req.get("n_predict") or 16)
            rate = float(req.get("x_tokens_per_s") or self.rate)
            if total < 1 or rate <= 0:
                raise ValueError("max_tokens and x_tokens_per_s must be positive")
        except (ValueError, TypeError, AttributeError) as exc:
            self._json(conn, 400, {"error": {"code": 400, "message": str(exc)}}, close)
            return
        self.stats["requests"] += 1
        chat = path == "/v1/chat/completions"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-fast{self.stats['requests']:08d}"
        if not req.get("stream"):
            self._json(conn, 200, self._complete(chat, ident, total), close)
            return
        conn.out += (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n"
                     b"Server: fast-upstream\r\n\r\n")
        event = self._event(chat, ident, " tok", None)
        tail = (_chunked(self._final(chat, ident, total)) + _chunked(b"data: [DONE]\n\n")
                + b"0\r\n\r\n")
        stream = _Stream(conn, _chunked(event), tail, time.monotonic(), rate, total)
        conn.stream = stream
        self.streams.append(stream)
        self.stats["streams"] += 1
        self._flush(conn)

    def _json(self, conn: _Conn, status: int, body: object, close: bool) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        conn.out += (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                     f"Content-Type: application/json; charset=utf-8\r\n"
                     f"Content-Length: {len(data)}\r\n"
                     f"{'Connection: close' + chr(13) + chr(10) if close else ''}"
                     f"Server: fast-upstream\r\n\r\n").encode() + data
        conn.close_after = close
        self._flush(conn)

    def _head(self, ident: str, chat: bool) -> str:
        return (f'"created":{int(time.time())},"id":"{ident}","model":{self._model_json},'
                f'"system_fingerprint":"fast-upstream","object":'
                f'"{"chat.completion.chunk" if chat else "text_completion"}"')

    def _event(self, chat: bool, ident: str, text: str, finish: str | None) -> bytes:
        fin = json.dumps(finish)
        choice = (f'{{"finish_reason":{fin},"index":0,"delta":{{"content":{json.dumps(text)}}}}}'
                  if chat else
                  f'{{"text":{json.dumps(text)},"index":0,"logprobs":null,"finish_reason":{fin}}}')
        return f'data: {{"choices":[{choice}],{self._head(ident, chat)}}}\n\n'.encode()

    def _final(self, chat: bool, ident: str, total: int) -> bytes:
        choice = ('{"finish_reason":"length","index":0,"delta":{}}' if chat else
                  '{"text":"","index":0,"logprobs":null,"finish_reason":"length"}')
        usage = (f'"usage":{{"completion_tokens":{total},"prompt_tokens":4,'
                 f'"total_tokens":{total + 4}}},"timings":{{"predicted_n":{total}}}')
        return f'data: {{"choices":[{choice}],{self._head(ident, chat)},{usage}}}\n\n'.encode()

    def _complete(self, chat: bool, ident: str, total: int) -> dict[str, object]:
        text = " tok" * total
        choice = ({"finish_reason": "length", "index": 0,
                   "message": {"role": "assistant", "content": text}} if chat else
                  {"text": text, "index": 0, "logprobs": None, "finish_reason": "length"})
        return {"choices": [choice], "created": int(time.time()), "id": ident,
                "model": self.model, "system_fingerprint": "fast-upstream",
                "object": "chat.completion" if chat else "text_completion",
                "usage": {"completion_tokens": total, "prompt_tokens": 4,
                          "total_tokens": total + 4},
                "timings": {"predicted_n": total}}

    # ------------------------------------------------------------------ streaming
    def _emit(self, now: float) -> None:
        for stream in list(self.streams):
            conn = stream.conn
            if conn.out:
                continue  # the reader has not taken the last write: tokens wait their turn
            due = min(stream.total, int((now - stream.start) / stream.interval) + 1,
                      stream.sent + _MOST_PER_WRITE)
            if due <= stream.sent:
                continue
            conn.out = stream.chunk * (due - stream.sent)
            self.stats["tokens"] += due - stream.sent
            stream.sent = due
            if due == stream.total:
                conn.out += stream.tail
                conn.close_after = True  # llama-server closes the connection after a stream
                self.streams.remove(stream)
                conn.stream = None
                self.stats["finished"] += 1
            self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(conn, cut=True)
                return
            self.stats["writes"] += 1
            conn.out = conn.out[sent:]
        if not conn.out and conn.close_after:
            self._drop(conn, cut=False)

    def _drop(self, conn: _Conn, cut: bool) -> None:
        if conn.stream is not None:
            self.streams.remove(conn.stream)
            conn.stream = None
            if cut:
                self.stats["cut_by_client"] += 1
        self.conns.pop(conn.sock, None)
        conn.sock.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", "-m", default="/models/fast-upstream.gguf")
    p.add_argument("--tokens-per-s", type=float, default=1000.0,
                   help="rate of a stream whose request names none (x_tokens_per_s)")
    args, _unknown = p.parse_known_args(argv)  # llama-server's other flags
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    print(f"fast-upstream listening on {args.host}:{args.port}", flush=True)
    server = FastUpstream(sock, args.model, os.environ.get("LLAMA_API_KEY", ""),
                          args.tokens_per_s)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
