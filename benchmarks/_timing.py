"""Shared timing helper: interleaved repeats, median, so both sides see the same machine load."""
import statistics
import time


def compare(fns: dict, repeats: int = 20, warmup: int = 3, inner: int = 1) -> dict:
    """Median seconds per call of each function, measured round-robin in the same run."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t) / inner)
    return {k: statistics.median(v) for k, v in times.items()}
