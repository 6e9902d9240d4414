"""Request counts and latencies in the Prometheus text format, without a client-library dependency.

Everything is updated from the event loop thread only, so plain dicts and floats need no locks.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from pspnet.device import rss_bytes

if TYPE_CHECKING:
    from pspnet.serve.admission import Budget
    from pspnet.serve.batcher import MicroBatcher

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Label values stay from a fixed set so that scanning random URLs cannot grow memory without bound.
KNOWN_PATHS = ("/v1/segment", "/v1/model", "/v1/sample", "/healthz", "/metrics", "/", "/docs", "/openapi.json")
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def route_label(path: str) -> str:
    if path in KNOWN_PATHS:
        return path
    return "/static" if path.startswith("/static/") else "other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class Histogram:
    """Cumulative-bucket histogram as Prometheus expects it."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, n in zip([*map(str, self.buckets), "+Inf"], self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.count}"]
        return out


class ServerMetrics:
    """HTTP counters per (route, method, status) and latency histograms per route, all from fixed label sets."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.in_flight = 0

    def record(self, path: str, method: str, status: int, seconds: float) -> None:
        route = route_label(path)
        key = (route, method_label(method), status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.setdefault(route, Histogram()).observe(seconds)

    def render(self, batcher: "MicroBatcher | None" = None, pixels: "Budget | None" = None,
               bodies: "Budget | None" = None) -> str:
        lines = _metric("pspnet_http_requests_total", "counter", "HTTP requests by route, method and status code.",
                        [f'{{route="{r}",method="{m}",status="{s}"}} {n}'
                         for (r, m, s), n in sorted(self.requests.items())])
        lines += ["# HELP pspnet_http_request_duration_seconds Time from request start to response end.",
                  "# TYPE pspnet_http_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            lines += hist.lines("pspnet_http_request_duration_seconds", f'route="{route}"')
        lines += _metric("pspnet_http_requests_in_flight", "gauge", "Requests being handled now.", self.in_flight)
        if batcher is not None:
            lines += [
                *_metric("pspnet_queue_depth", "gauge", "Images waiting for the model.", batcher.depth),
                *_metric("pspnet_queue_capacity", "gauge", "Bound of the queue; beyond it requests get 503.",
                         batcher.max_queue),
                *_metric("pspnet_batches_total", "counter", "Forward passes run by the micro-batcher.",
                         batcher.batches),
                *_metric("pspnet_batched_images_total", "counter", "Images segmented by the micro-batcher.",
                         batcher.items),
                *_metric("pspnet_batch_size_total", "counter", "Batches by number of images in them.",
                         [f'{{size="{k}"}} {v}' for k, v in sorted(batcher.batch_sizes.items())]),
                *_metric("pspnet_inference_seconds_total", "counter", "Time the model thread spent on batches.",
                         f"{batcher.run_seconds:.6f}"),
                *_metric("pspnet_queue_wait_seconds_total", "counter", "Time images waited in the queue, summed.",
                         f"{batcher.wait_seconds:.6f}"),
                *_metric("pspnet_cancelled_total", "counter",
                         "Queued images dropped because their client disconnected.", batcher.cancelled),
            ]
        for budget, name, what in ((pixels, "pspnet_pixels", "Pixels of the images admitted and not yet answered."),
                                   (bodies, "pspnet_body_bytes", "Request body bytes admitted and not yet released.")):
            if budget is not None:
                lines += _metric(f"{name}_in_flight", "gauge", what, budget.used)
                lines += _metric(f"{name}_budget", "gauge",
                                 f"Bound of {name}_in_flight; beyond it requests get 503.", budget.capacity)
        lines += _metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss_bytes())
        lines += _metric("process_start_time_seconds", "gauge", "Start time of the process since the epoch.",
                         f"{self.started:.3f}")
        return "\n".join(lines) + "\n"


def _metric(name: str, kind: str, help_text: str, samples: Any) -> list[str]:
    """One metric in the text format: HELP, TYPE, then a sample line per value (a list holds '{labels} value')."""
    values = samples if isinstance(samples, list) else [f" {samples}"]
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *(f"{name}{v}" for v in values)]
