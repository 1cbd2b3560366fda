#!/usr/bin/env python3
"""aiotask handler: upper-cases each task; a task "fail:MESSAGE" is answered with the error MESSAGE.

Run it with: aiotaskd --handler exec:/path/to/uppercase.py (see docs/handler-protocol.md).
"""
import struct
import sys

RESULT, ERROR = 0, 1


def read_exactly(stream, n):
    """Reads n bytes, or returns None if the input ends first."""
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (header := read_exactly(stdin, 4)) is not None:
        task = read_exactly(stdin, struct.unpack(">I", header)[0])
        if task is None:
            break  # the supervisor went away in the middle of a task
        if task.startswith(b"fail:"):
            kind, reply = ERROR, task[5:].decode("utf-8", "replace").encode("utf-8")
        else:
            kind, reply = RESULT, task.upper()
        stdout.write(struct.pack(">BI", kind, len(reply)) + reply)
        stdout.flush()


if __name__ == "__main__":
    main()
