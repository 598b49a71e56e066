"""The dashboard's event feed against the real app: it follows the stream and stops at once."""

from __future__ import annotations

from lemonade_jupyter.kernel.events import EventFeed
from tests.helpers.memory_app import MemoryApp
from tests.helpers.polling import wait_for


def test_stop_hangs_up_a_quiet_stream_instead_of_waiting_for_its_read_timeout(app: MemoryApp):
    """A feed reading a quiet stream is blocked in a read of up to ``read_timeout`` seconds;
    closing a dashboard must not wait that long. ``stop`` shuts the socket down, which ends
    the blocked read at once."""
    feed = EventFeed(app.client(), read_timeout=60.0)
    feed.start()
    try:
        wait_for(lambda: feed._hangup is not None, what="the event stream to open")
        thread = feed._thread
        assert thread is not None
        feed.stop(timeout=5.0)
        assert not thread.is_alive(), "the feed still waits in its read after stop()"
        assert feed.error == ""  # a hang-up we asked for is no connection problem
    finally:
        feed.stop(timeout=0)
