"""Seeds derived from *values*, never from positions.

Every random stream of a study is named by what it is for — (study seed, repeat, time in
seconds, condition name, layer name, …) — and `derive_seed` turns that name into a 63-bit
seed. So growing a list (a time point, a condition, a layer left digital) never changes the
draws of what was already there, and two folders that ran parts of one study agree record
for record.
"""
from __future__ import annotations

import hashlib
import math
from typing import Union

Part = Union[int, float, str, None]


def _token(p: Part) -> str:
    if isinstance(p, bool) or not isinstance(p, (int, float, str, type(None))):
        raise TypeError(f"derive_seed: parts are ints, floats, strings or None, got {type(p).__name__} {p!r}")
    if isinstance(p, float):
        if not math.isfinite(p):
            raise ValueError(f"derive_seed: a float part must be finite, got {p!r}")
        return f"f{p!r}" if not p.is_integer() else f"i{int(p)}"  # 3600.0 and 3600 name the same time
    return f"i{p}" if isinstance(p, int) else ("n" if p is None else f"s{len(p)}:{p}")


def derive_seed(*parts: Part) -> int:
    """A seed in [0, 2**63) from the named parts (order matters; types are part of the
    name, except that an integral float equals its int: 3600.0 ≡ 3600)."""
    text = "|".join(_token(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1
