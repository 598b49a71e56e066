"""Observation routes: the event stream (SSE), Prometheus metrics, the last request's
statistics, the memory history, and the pressure test hook."""

from __future__ import annotations

import asyncio
import json

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..core.events import Event
from ..core.request_stats import RequestRecord
from ..core.validation import check_number
from ..errors import InvalidRequestError
from .base import EventStreamHandler, LemonadeHandler, PolledHandler

#: Events sent first to a new subscriber without ``Last-Event-ID``.
HISTORY_ON_CONNECT = 50
#: Seconds of silence before a ``: ping`` keeps proxies from closing the stream.
KEEPALIVE_S = 15.0


def sse_event(event: Event) -> bytes:
    return (
        f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(event.to_json())}\n\n"
    ).encode()


class EventsHandler(EventStreamHandler):
    """``GET lemonade/api/v1/events``: router events as SSE, recent history first.

    ``Last-Event-ID`` (header, or ``?last_event_id=``) resumes after that id; an id newer than
    any event (from before a server restart) gets the recent history instead. The stream never
    counts as Jupyter activity, so an open dashboard does not keep an idle server alive.
    """

    @web.authenticated
    @authorized
    async def get(self) -> None:
        raw = self.request.headers.get("Last-Event-ID") or self.get_argument(
            "last_event_id", ""
        )
        try:
            last_id = int(raw) if raw else None
        except ValueError:
            raise InvalidRequestError("Last-Event-ID must be an integer") from None
        events = self.router.events
        queue = events.subscribe()  # before the history, so nothing falls in between
        newest = events.recent(limit=1)
        if last_id is not None and last_id > (newest[0].id if newest else 0):
            # An id we never sent: the client saw an earlier run of the server (ids restart
            # at 1). Skipping up to it would hide every event until the ids caught up.
            last_id = None
        self.router.note_watcher()
        try:
            self.set_event_stream_headers()
            history = (events.recent(after_id=last_id) if last_id is not None
                       else events.recent(limit=HISTORY_ON_CONNECT))
            sent = last_id or 0
            self.write(b": lemonade events\n\n")
            for event in history:
                self.write(sse_event(event))
                sent = event.id
            await self.flush()
            while not self._closed.is_set():
                getter = asyncio.ensure_future(queue.get())
                closed = asyncio.ensure_future(self._closed.wait())
                done, _ = await asyncio.wait(
                    {getter, closed}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                closed.cancel()
                if getter not in done:
                    getter.cancel()
                    if not self._closed.is_set():
                        self.write(b": ping\n\n")
                        await self.flush()
                    continue
                event = getter.result()
                if event.id <= sent:
                    continue
                self.write(sse_event(event))
                sent = event.id
                self.router.note_watcher()
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            events.unsubscribe(queue)
        if not self._closed.is_set():
            self.finish(set_content_type="text/event-stream")


class MetricsHandler(PolledHandler):
    """``GET lemonade/metrics``: Prometheus text format."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.router.memory.fresh(5.0)
        self.set_status(200)
        self.finish(self.router.metrics.render(),
                    set_content_type="text/plain; version=0.0.4; charset=utf-8")


class StatsHandler(PolledHandler):
    """``GET lemonade/api/v1/stats``: the last generation request's figures (lemonade's stats
    endpoint): time to first token, tokens per second, input and output tokens, as the engine
    measured them. Every figure is null before the first such request. ``users`` adds up each
    user's requests and tokens since the start (``core/usage.py``), ``totals`` everyone's."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        last = self.router.stats.last
        if last is None:
            body = {name: None for name in RequestRecord.__dataclass_fields__}
        else:
            body = last.to_json()
        usage = self.router.stats.usage
        body["users"] = usage.to_json()
        body["totals"] = usage.totals.to_json()
        self.write_json(body)


class MemoryHistoryHandler(PolledHandler):
    """``GET lemonade/api/v1/memory/history[?since=T]``: the memory samples the router kept.

    What a dashboard draws its chart from, so that a new one starts full. Reading it takes no
    sample and does not keep the sampler running.
    """

    @web.authenticated
    @authorized
    async def get(self) -> None:
        raw = self.get_argument("since", "")
        since = None
        if raw:
            try:
                since = check_number("since", float(raw))
            except (ValueError, InvalidRequestError):
                raise InvalidRequestError(
                    "Parameter 'since' must be a Unix time in seconds", param="since"
                ) from None
        memory = self.router.memory
        latest = memory.latest
        samples = [{"time": t, "pressure": p} for t, p in list(memory.history)
                   if since is None or t > since]
        self.write_json({
            "source": latest.source if latest is not None else None,
            "devices": [d.to_json() for d in latest.devices] if latest is not None else [],
            "samples": samples,
        })


class SimulatePressureHandler(LemonadeHandler):
    """``POST lemonade/internal/simulate-vram-pressure {"pct": x}``: one evaluation, now.

    ``pct`` in [0, 1] is taken as the measured pressure; -1 runs an idle-only pass. Answers with
    the actions that were committed.
    """

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        pct = body.get("pct")
        try:
            pressure = (None if check_number("pct", pct) == -1
                        else check_number("pct", pct, minimum=0, maximum=1))
        except InvalidRequestError:
            raise InvalidRequestError(
                "Parameter 'pct' must be a number in [0, 1], or -1 for an idle-only pass",
                param="pct",
            ) from None
        done = await self.router.evaluate_eviction(pressure)
        self.write_json({"status": "success", "pct": pct,
                         "actions": [d.to_json() for d in done]})
