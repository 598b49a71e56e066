"""The engine's ``timings`` of a stream are recorded once its last event went out, even when
the client hangs up on ``[DONE]`` before the backend ends its stream (the request's task is
then cancelled): the answer was complete. A client that leaves before them records nothing."""

from __future__ import annotations

import asyncio

import pytest

from lemonade_jupyter.server.relay import AnswerRelay
from tests.unit.test_relay_first_chunk import _Handler

TIMINGS = (b'data: {"choices":[],"model":"/m.gguf","timings":{"predicted_n":5,'
           b'"prompt_n":3}}\n\n')
DONE = b"data: [DONE]\n\n"
TOKEN = b'data: {"choices":[{"delta":{"content":"hi"}}],"model":"/m.gguf"}\n\n'


class _HangsUpAfter:
    """A stream whose client leaves (the task is cancelled) once ``chunks`` went out."""

    code = 200

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    def arrived(self) -> bytes:
        return self._chunks.pop(0)

    async def next_chunk(self) -> bytes:
        if self._chunks:
            return self._chunks.pop(0)
        raise asyncio.CancelledError  # on_connection_close cancelled the request's task


async def _relay(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    recorded: list[tuple[str, bytes]] = []
    relay = AnswerRelay(_Handler(), 30.0,  # type: ignore[arg-type]
                        lambda model, tail: recorded.append((model, tail)))
    with pytest.raises(asyncio.CancelledError):
        await relay.stream(_HangsUpAfter(chunks), "user.m")  # type: ignore[arg-type]
    return recorded


async def test_a_client_that_hangs_up_on_done_still_gets_its_request_recorded():
    [(model, tail)] = await _relay([TOKEN, TIMINGS + DONE])
    assert model == "user.m" and b'"predicted_n":5' in tail


async def test_the_tail_handed_over_is_what_went_out_last():
    [(_, tail)] = await _relay([TOKEN, TIMINGS, DONE])
    assert tail.endswith(TIMINGS + DONE)  # as the engine sent it
