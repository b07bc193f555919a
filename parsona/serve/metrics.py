"""Request counts, latency and batch-size histograms, in Prometheus' text format (no dependency)."""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{upper}"}} {n}' for upper, n in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        braces = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{braces} {self.sum:.6f}", f"{name}_count{braces} {self.total}"]


class Metrics:
    """Thread-safe counters the server updates and ``/metrics`` renders."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()            # (route, method, status) -> count
        self.latency: dict[str, Histogram] = {}       # route -> seconds
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.generated_tokens = 0
        self.max_batch_size = 0

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int, tokens: int) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.generated_tokens += tokens
            self.max_batch_size = max(self.max_batch_size, size)

    def render(self, resident_loras: int, max_resident_loras: int, queued: int) -> str:
        with self._lock:
            lines = ["# HELP parsona_requests_total HTTP requests by route, method and status.",
                     "# TYPE parsona_requests_total counter"]
            lines += [f'parsona_requests_total{{route="{r}",method="{m}",status="{s}"}} {n}'
                      for (r, m, s), n in sorted(self.requests.items())]
            lines += ["# HELP parsona_request_seconds Time from request to the end of the response.",
                      "# TYPE parsona_request_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("parsona_request_seconds", f'route="{route}"')
            lines += ["# HELP parsona_batch_size Rows per decoded batch.", "# TYPE parsona_batch_size histogram",
                      *self.batch_size.lines("parsona_batch_size"),
                      "# HELP parsona_generated_tokens_total Tokens generated.",
                      "# TYPE parsona_generated_tokens_total counter",
                      f"parsona_generated_tokens_total {self.generated_tokens}"]
        lines += ["# HELP parsona_resident_loras User LoRAs resident in the bank.", "# TYPE parsona_resident_loras gauge",
                  f"parsona_resident_loras {resident_loras}",
                  "# HELP parsona_max_resident_loras Most user LoRAs kept resident.", "# TYPE parsona_max_resident_loras gauge",
                  f"parsona_max_resident_loras {max_resident_loras}",
                  "# HELP parsona_queued_requests Generation requests waiting for a batch.",
                  "# TYPE parsona_queued_requests gauge", f"parsona_queued_requests {queued}"]
        return "\n".join(lines) + "\n"
