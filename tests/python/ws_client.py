"""A WebSocket client for the end-to-end tests, with the `websockets` library.

    python ws_client.py URL MODE [ARG]

Modes (each prints one JSON object: what the client saw, and the close code it got):
  echo N        send N text messages, read their echoes, close normally (1000)
  oversize N    send one small message, then one of N bytes, then read until closed
  flood N       send N messages as fast as possible, then read until closed
  idle          send nothing; read until the server closes
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def read_until_closed(ws, seen):
    try:
        async for message in ws:
            seen.append(len(message))
    except ConnectionClosed:
        pass


async def main(url, mode, arg):
    seen = []
    started = time.monotonic()
    # No compression: the bytes on the wire are what the test sends.
    async with connect(url, compression=None, max_size=None, ping_interval=None) as ws:
        greeting = await ws.recv()
        if mode == "echo":
            for i in range(int(arg)):
                await ws.send(f"message {i}")
                seen.append(len(await ws.recv()))
            await ws.close(1000, "done")
        elif mode == "oversize":
            await ws.send("small")
            seen.append(len(await ws.recv()))
            await ws.send(b"x" * int(arg))
            await read_until_closed(ws, seen)
        elif mode == "flood":
            try:
                for i in range(int(arg)):
                    await ws.send(f"flood {i}")
            except ConnectionClosed:
                pass
            await read_until_closed(ws, seen)
        elif mode == "idle":
            await read_until_closed(ws, seen)
        else:
            raise SystemExit(f"unknown mode {mode}")
        await ws.wait_closed()
        rcvd = ws.protocol.close_rcvd
        received = 1006 if rcvd is None else rcvd.code
        reason = "" if rcvd is None else rcvd.reason
    print(
        json.dumps(
            {
                "greeting": greeting,
                "echoes": len(seen),
                "close_code": received,
                "close_reason": reason,
                "seconds": time.monotonic() - started,
            }
        )
    )


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
