"""The relay takes a stream's first chunk at once when it came with the headers (no task and
no ping timer for it), and otherwise waits for it: either way each byte goes out once, in
order, renamed."""

from __future__ import annotations

import asyncio

from lemonade_jupyter.server.relay import AnswerRelay


class _Handler:
    """What the relay writes through: a RequestHandler's public methods, recorded."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.headers: dict[str, str] = {}
        self.finished = False

    def set_status(self, code: int) -> None:
        self.status = code

    def set_event_stream_headers(self) -> None:
        self.headers["Content-Type"] = "text/event-stream"

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def finish(self) -> None:
        self.finished = True


class _Chunks:
    """A streamed answer: ``already`` has arrived with the headers, ``later`` comes after."""

    code = 200

    def __init__(self, already: bytes, later: list[bytes]) -> None:
        self._already = already
        self._later = list(later)
        self.waited_for_first = False

    def arrived(self) -> bytes:
        already, self._already = self._already, b""
        return already

    async def __anext__(self) -> bytes:
        self.waited_for_first = True
        chunk = await self.next_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def next_chunk(self) -> bytes:
        await asyncio.sleep(0)
        return self._later.pop(0) if self._later else b""


EVENT = b'data: {"choices":[],"model":"/models/x.gguf"}\n\n'
RENAMED = b'data: {"choices":[],"model":"user.x"}\n\n'


async def _relay(chunks: _Chunks) -> _Handler:
    handler = _Handler()
    relay = AnswerRelay(handler, ping_interval=30.0)  # type: ignore[arg-type]
    await relay.stream(chunks, "user.x")  # type: ignore[arg-type]
    assert handler.finished and relay.headers_sent and relay.data_sent
    return handler


async def test_a_first_chunk_that_came_with_the_headers_is_taken_at_once():
    chunks = _Chunks(EVENT, [EVENT, b"data: [DONE]\n\n"])
    handler = await _relay(chunks)
    assert not chunks.waited_for_first
    assert b"".join(handler.out) == RENAMED * 2 + b"data: [DONE]\n\n"


async def test_a_first_chunk_still_on_its_way_is_waited_for():
    chunks = _Chunks(b"", [EVENT[:10], EVENT[10:] + EVENT, b"data: [DONE]\n\n"])
    handler = await _relay(chunks)
    assert chunks.waited_for_first
    assert b"".join(handler.out) == RENAMED * 2 + b"data: [DONE]\n\n"
