"""Byte-level mutation of valid files, shared by the decoder fuzz tests (images through io, the CLI, the server)."""

from __future__ import annotations

import random


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four byte flips, insertions, deletions or a truncation."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, pos = rng.randrange(4), rng.randrange(len(buf))
        if op == 0:
            buf[pos] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 8)]
        else:
            del buf[max(pos, 1):]
        if not buf:
            buf = bytearray(b"\0")
    return bytes(buf)
