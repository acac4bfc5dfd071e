"""The fixed payload set for serializer benchmarks (deterministic: same bytes on every run).

Each payload is plain data every compared system can represent (no tuples, str keys only),
except ``bytes_1mib`` which JSON cannot carry.
"""

from __future__ import annotations

import random
from typing import Any

_rng = random.Random(20240521)


def _word(lo: int, hi: int) -> str:
    return "".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(lo, hi)))


# A typical RPC request envelope.
SMALL_RPC = {
    "id": 48213,
    "method": "inventory.reserve",
    "params": {"sku": "A-1029-XL", "quantity": 3, "warehouse": 7, "express": True},
    "meta": {"deadline_ms": 1500, "trace": "4bf92f3577b34da6a3ce929d0e0e4736", "retry": 0},
}

# Mixed magnitudes: mostly small counters, some 32- and 64-bit ids, some negatives.
INTS_1000 = [
    _rng.choice(
        (
            _rng.randint(0, 127),
            _rng.randint(128, 65535),
            _rng.randint(-(2**31), 2**31),
            _rng.randint(0, 2**63),
        )
    )
    for _ in range(1000)
]

# Short words; every 8th carries non-ASCII characters.
STRS_1000 = [_word(3, 16) + ("é€" if i % 8 == 0 else "") for i in range(1000)]

# Records as an API would list them: repeated keys, nested objects, mixed value types.
RECORDS_100 = [
    {
        "id": 10_000 + i,
        "name": _word(5, 12).title(),
        "email": f"{_word(4, 9)}@example.com",
        "active": i % 3 != 0,
        "score": round(_rng.uniform(0, 100), 3),
        "tags": [_word(3, 7) for _ in range(i % 4)],
        "address": {"street": f"{i} {_word(4, 10).title()} St", "city": _word(5, 9).title()},
        "balance": None if i % 5 == 0 else _rng.randint(0, 10**7),
    }
    for i in range(100)
]

BYTES_1MIB = bytes(_rng.getrandbits(8) for _ in range(4096)) * 256

FLOATS_10000 = [_rng.uniform(-1e6, 1e6) for _ in range(10_000)]

PAYLOADS: dict[str, Any] = {
    "small_rpc": SMALL_RPC,
    "ints_1000": INTS_1000,
    "strs_1000": STRS_1000,
    "records_100": RECORDS_100,
    "bytes_1mib": BYTES_1MIB,
    "floats_10000": FLOATS_10000,
}

# Payloads JSON cannot represent (the json system is skipped for them).
NOT_JSONABLE = frozenset({"bytes_1mib"})
