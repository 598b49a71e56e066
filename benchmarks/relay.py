"""The least a Python process in the middle can cost: a byte relay (no HTTP parsing).

``python -m benchmarks.relay LISTEN_PORT UPSTREAM_PORT`` accepts loopback connections and
copies bytes both ways to the upstream port with asyncio. Section 1 sends the same request
through it: what it adds over direct is the price of one extra process hop on this machine
(wake-ups, copies, the event loop), which no proxy written in Python can go below; the rest of
what the router adds is HTTP, Jupyter and the router.
"""

from __future__ import annotations

import asyncio
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve(listen: int, upstream: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("relay listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
