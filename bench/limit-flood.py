"""Flood airlock with plain HTTP requests, each carrying a distinct X-Key header value,
over a few pipelined keep-alive connections: the "1,000,000 distinct source keys" of the
limits benchmark (bench/limit-flood.sh). It only sends and counts; it asserts nothing.

    python3 bench/limit-flood.py PORT KEYS [CONNECTIONS] [BATCH]

Prints one JSON line: requests sent, answers counted, seconds.
"""

import asyncio
import json
import sys
import time


async def worker(port, start, stop, batch, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = start
    while key < stop:
        end = min(key + batch, stop)
        writer.write(
            b"".join(
                b"GET /flood HTTP/1.1\r\nHost: bench\r\nX-Key: k%d\r\n\r\n" % k
                for k in range(key, end)
            )
        )
        await writer.drain()
        # Each answer starts with its status line; the bodies are short and never
        # contain one, so counting status lines counts answers.
        want, seen, tail = end - key, 0, b""
        while seen < want:
            chunk = await reader.read(1 << 16)
            if not chunk:
                raise SystemExit(f"airlock closed the connection after {key + seen} requests")
            data = tail + chunk
            seen += data.count(b"HTTP/1.1 ")
            # Shorter than a status line, so never counted twice, and it lets one
            # split across two reads be counted once.
            tail = data[-8:]
        counts.append(want)
        key = end
    writer.close()


async def main():
    port, keys = int(sys.argv[1]), int(sys.argv[2])
    connections = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    counts, share, t0 = [], -(-keys // connections), time.monotonic()
    await asyncio.gather(
        *(
            worker(port, i * share, min(keys, (i + 1) * share), batch, counts)
            for i in range(connections)
        )
    )
    print(json.dumps({"keys": keys, "answers": sum(counts), "seconds": round(time.monotonic() - t0, 1)}, separators=(",", ":")))


asyncio.run(main())
