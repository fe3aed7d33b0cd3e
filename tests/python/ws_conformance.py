"""Conformance cases for a WebSocket path, with the `websockets` library on both ends.

    python ws_conformance.py server          # an echo server on a free port; prints it
    python ws_conformance.py client URL      # run every case against URL; prints JSON

The client runs the same cases whether URL is the server itself or airlock in front of
it, and prints {case: verdict}; the test compares the two. Cases cover what RFC 6455
asks a proxy to pass through untouched: text and binary, empty and large messages,
fragmented messages with a ping between fragments, UTF-8 beyond ASCII, pings and pongs
from the client, permessage-deflate (RSV1) both ways, and the close handshake with a
code and reason.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def run_server():
    async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await server.serve_forever()


async def roundtrip(ws, message):
    await ws.send(message)
    return await asyncio.wait_for(ws.recv(), 10) == message


async def case(url, compression, body):
    try:
        async with connect(url, compression=compression, max_size=None, ping_interval=None) as ws:
            return await body(ws)
    except Exception as e:  # a verdict, not a crash: the comparison shows it
        return f"error: {type(e).__name__}"


async def fragmented(ws, parts, ping_between):
    async def frames():
        for i, part in enumerate(parts):
            if ping_between and i == 1:
                await ws.ping(b"between")
            yield part

    await ws.send(frames())
    expected = parts[0][:0].join(parts)
    return await asyncio.wait_for(ws.recv(), 10) == expected


async def close_with_reason(ws):
    await ws.close(4000, "bye now")
    rcvd = ws.protocol.close_rcvd
    return None if rcvd is None else [rcvd.code, rcvd.reason]


async def ping_pong(ws):
    waiter = await ws.ping(b"client ping")
    latency = await asyncio.wait_for(waiter, 10)
    return latency >= 0


async def run_client(url):
    cases = {
        "text": lambda ws: roundtrip(ws, "hello"),
        "binary": lambda ws: roundtrip(ws, bytes(range(256))),
        "empty text": lambda ws: roundtrip(ws, ""),
        "empty binary": lambda ws: roundtrip(ws, b""),
        "utf-8": lambda ws: roundtrip(ws, "κόσμε 🌍 ✓"),
        "125 bytes": lambda ws: roundtrip(ws, b"x" * 125),
        "126 bytes": lambda ws: roundtrip(ws, b"x" * 126),
        "65536 bytes": lambda ws: roundtrip(ws, b"y" * 65536),
        "1 MiB": lambda ws: roundtrip(ws, b"z" * (1 << 20)),
        "fragmented text": lambda ws: fragmented(ws, ["frag", "men", "ted"], False),
        "fragmented binary, ping between": lambda ws: fragmented(
            ws, [b"a" * 1000, b"b" * 1000, b"c"], True
        ),
        "client ping": ping_pong,
        "close with code and reason": close_with_reason,
    }
    verdicts = {}
    for compression in [None, "deflate"]:
        for name, body in cases.items():
            key = f"{name} ({compression or 'no compression'})"
            verdicts[key] = await case(url, compression, body)
    print(json.dumps(verdicts))


if sys.argv[1] == "server":
    asyncio.run(run_server())
else:
    asyncio.run(run_client(sys.argv[2]))
