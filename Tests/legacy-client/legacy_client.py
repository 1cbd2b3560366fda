#!/usr/bin/env python3
"""A client of the original aiotask 0.0.2 wire protocol, written from its framing alone (stdlib only).

It submits --tasks tasks pipelined on one connection, each with a random UUID4 and random bytes, matches the
DONE frames to the tasks by UUID (results arrive in completion order), checks each result against what the
server's handler should return (--expect echo: the task itself), then asks the STATUS of one finished task.
It prints a one-line summary and exits 0 only if every task got its own, correct result and the server sent
nothing a 0.0.2 client could not parse.

Frame: type (u8) | length (u16, big-endian) | payload. ENQUEUE = 1 (uuid + task), UPDATE = 2 (uuid + status),
DONE = 3 (uuid + result), STATUS = 4 (uuid). Status DONE = 2, NOT_FOUND = 255.
"""
import argparse
import os
import random
import socket
import struct
import sys
import uuid

ENQUEUE, UPDATE, DONE, STATUS = 1, 2, 3, 4
STATUS_DONE, STATUS_NOT_FOUND = 2, 255


def frame(kind, payload):
    # The original client asserts type < 128 and length < 32768.
    assert kind < 128 and len(payload) < 32768
    return struct.pack(">BH", kind, len(payload)) + payload


class FrameReader:
    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()

    def read_exactly(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def next(self):
        kind = self.read_exactly(1)[0]
        if kind >= 128:
            raise ValueError(f"frame type {kind} is not part of the original protocol")
        (length,) = struct.unpack(">H", self.read_exactly(2))
        return kind, self.read_exactly(length)


def connect(args):
    if args.unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.unix)
    else:
        sock = socket.create_connection((args.host, args.port))
    sock.settimeout(args.timeout)
    return sock


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4242)
    parser.add_argument("--unix", help="connect to this Unix socket instead of TCP")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--max-size", type=int, default=2000, help="largest task, in bytes (below 32,752)")
    parser.add_argument("--expect", choices=["echo"], default="echo")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds any one read may take")
    args = parser.parse_args()

    tasks = {}
    while len(tasks) < args.tasks:
        tasks[uuid.uuid4().bytes] = os.urandom(random.randint(0, args.max_size))

    sock = connect(args)
    reader = FrameReader(sock)
    sock.sendall(b"".join(frame(ENQUEUE, task_id + task) for task_id, task in tasks.items()))

    pending = set(tasks)
    wrong = 0
    while pending:
        kind, payload = reader.next()
        task_id, rest = payload[:16], payload[16:]
        if kind == DONE:
            if task_id not in pending:
                print(f"DONE for an unknown or already answered task {uuid.UUID(bytes=task_id)}", file=sys.stderr)
                return 1
            pending.discard(task_id)
            if rest != tasks[task_id]:
                wrong += 1
        elif kind == UPDATE:
            status = rest[0] if len(rest) == 1 else None
            print(f"task {uuid.UUID(bytes=task_id)}: UPDATE status {status}", file=sys.stderr)
            return 1
        else:
            print(f"unexpected frame type {kind}", file=sys.stderr)
            return 1

    probe = next(iter(tasks))
    sock.sendall(frame(STATUS, probe) + frame(STATUS, uuid.uuid4().bytes))
    statuses = []
    for _ in range(2):
        kind, payload = reader.next()
        if kind != UPDATE or len(payload) != 17:
            print(f"expected UPDATE, got type {kind} of {len(payload)} bytes", file=sys.stderr)
            return 1
        statuses.append(payload[16])
    sock.close()

    matched = args.tasks - wrong
    print(f"{matched}/{args.tasks} tasks matched; status of a finished task {statuses[0]}, of an unknown one {statuses[1]}")
    return 0 if wrong == 0 and statuses == [STATUS_DONE, STATUS_NOT_FOUND] else 1


if __name__ == "__main__":
    sys.exit(main())
