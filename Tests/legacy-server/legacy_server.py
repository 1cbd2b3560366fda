#!/usr/bin/env python3
"""A stand-in for an original aiotask 0.0.2 server, written from its framing alone (stdlib only).

It speaks only the original frames, and reacts to anything else as the original does: a frame whose type byte
is 128 or more makes it log "Bad TLV type N. Discarding received data." and throw away everything it has
buffered from that connection (the connection stays open, and is of no use to a client that sent a HELLO
followed by its tasks). Its handler echoes each task after a short random delay, so that results come back in
completion order, not submission order.

It listens on 127.0.0.1 at a free port (or --unix PATH), prints "listening PORT" (or "listening PATH") on
stdout, and serves until killed. It logs a line on stderr for each connection it ends and each bad frame.

Frame: type (u8) | length (u16, big-endian) | payload. ENQUEUE = 1 (uuid + task), UPDATE = 2 (uuid + status),
DONE = 3 (uuid + result), STATUS = 4 (uuid). Status IN_QUEUE = 0, PROCESSING = 1, DONE = 2, NOT_FOUND = 255.
"""
import argparse
import asyncio
import random
import struct
import sys

ENQUEUE, UPDATE, DONE, STATUS = 1, 2, 3, 4
IN_QUEUE, PROCESSING, STATUS_DONE, NOT_FOUND = 0, 1, 2, 255


def frame(kind, payload):
    # The original asserts type < 128 and length < 32768 on what it sends.
    assert kind < 128 and len(payload) < 32768
    return struct.pack(">BH", kind, len(payload)) + payload


def log(text):
    print(text, file=sys.stderr, flush=True)


async def serve(reader, writer):
    buffer = bytearray()
    statuses = {}  # uuid -> status, as the original's task table (never pruned)
    running = set()
    enqueued = 0

    async def run(uuid, task):
        statuses[uuid] = PROCESSING
        await asyncio.sleep(random.random() * 0.002)
        statuses[uuid] = STATUS_DONE
        writer.write(frame(DONE, uuid + task))

    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 1:
            kind = buffer[0]
            if kind >= 128:
                log(f"Bad TLV type {kind}. Discarding received data.")
                buffer.clear()
                break
            if len(buffer) < 3:
                break
            (length,) = struct.unpack(">H", buffer[1:3])
            if len(buffer) < 3 + length:
                break
            payload = bytes(buffer[3 : 3 + length])
            del buffer[: 3 + length]
            if kind == ENQUEUE and length >= 16:
                uuid, task = payload[:16], payload[16:]
                statuses[uuid] = IN_QUEUE
                enqueued += 1
                job = asyncio.ensure_future(run(uuid, task))
                running.add(job)
                job.add_done_callback(running.discard)
            elif kind == STATUS and length == 16:
                writer.write(frame(UPDATE, payload + bytes([statuses.get(payload, NOT_FOUND)])))
            else:
                log(f"Bad TLV type {kind} of length {length}. Discarding received data.")
                buffer.clear()
                break
    for job in list(running):
        job.cancel()
    log(f"connection closed after {enqueued} tasks")
    writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unix", help="listen on this Unix socket path instead of TCP")
    args = parser.parse_args()
    if args.unix:
        server = await asyncio.start_unix_server(serve, path=args.unix)
        print(f"listening {args.unix}", flush=True)
    else:
        server = await asyncio.start_server(serve, host="127.0.0.1", port=0)
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
