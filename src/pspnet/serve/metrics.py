"""Request counts and latencies in the Prometheus text format, without a client-library dependency.

Everything is updated from the event loop thread only, so plain dicts and floats need no locks.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING

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
        lines = [
            "# HELP pspnet_http_requests_total HTTP requests by route, method and status code.",
            "# TYPE pspnet_http_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            lines.append(f'pspnet_http_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}')
        lines += ["# HELP pspnet_http_request_duration_seconds Time from request start to response end.",
                  "# TYPE pspnet_http_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            lines += hist.lines("pspnet_http_request_duration_seconds", f'route="{route}"')
        lines += ["# HELP pspnet_http_requests_in_flight Requests being handled now.",
                  "# TYPE pspnet_http_requests_in_flight gauge", f"pspnet_http_requests_in_flight {self.in_flight}"]
        if batcher is not None:
            lines += [
                "# HELP pspnet_queue_depth Images waiting for the model.", "# TYPE pspnet_queue_depth gauge",
                f"pspnet_queue_depth {batcher.depth}",
                "# HELP pspnet_queue_capacity Bound of the queue; beyond it requests get 503.",
                "# TYPE pspnet_queue_capacity gauge", f"pspnet_queue_capacity {batcher.max_queue}",
                "# HELP pspnet_batches_total Forward passes run by the micro-batcher.",
                "# TYPE pspnet_batches_total counter", f"pspnet_batches_total {batcher.batches}",
                "# HELP pspnet_batched_images_total Images segmented by the micro-batcher.",
                "# TYPE pspnet_batched_images_total counter", f"pspnet_batched_images_total {batcher.items}",
                "# HELP pspnet_batch_size_total Batches by number of images in them.",
                "# TYPE pspnet_batch_size_total counter",
                *(f'pspnet_batch_size_total{{size="{k}"}} {v}' for k, v in sorted(batcher.batch_sizes.items())),
                "# HELP pspnet_inference_seconds_total Time the model thread spent on batches.",
                "# TYPE pspnet_inference_seconds_total counter", f"pspnet_inference_seconds_total {batcher.run_seconds:.6f}",
                "# HELP pspnet_queue_wait_seconds_total Time images waited in the queue, summed.",
                "# TYPE pspnet_queue_wait_seconds_total counter", f"pspnet_queue_wait_seconds_total {batcher.wait_seconds:.6f}",
                "# HELP pspnet_cancelled_total Queued images dropped because their client disconnected.",
                "# TYPE pspnet_cancelled_total counter", f"pspnet_cancelled_total {batcher.cancelled}",
            ]
        if pixels is not None:
            lines += [
                "# HELP pspnet_pixels_in_flight Pixels of the images admitted and not yet answered.",
                "# TYPE pspnet_pixels_in_flight gauge", f"pspnet_pixels_in_flight {pixels.used}",
                "# HELP pspnet_pixels_budget Bound of pspnet_pixels_in_flight; beyond it requests get 503.",
                "# TYPE pspnet_pixels_budget gauge", f"pspnet_pixels_budget {pixels.capacity}",
            ]
        if bodies is not None:
            lines += [
                "# HELP pspnet_body_bytes_in_flight Request body bytes admitted and not yet released.",
                "# TYPE pspnet_body_bytes_in_flight gauge", f"pspnet_body_bytes_in_flight {bodies.used}",
                "# HELP pspnet_body_bytes_budget Bound of pspnet_body_bytes_in_flight; beyond it requests get 503.",
                "# TYPE pspnet_body_bytes_budget gauge", f"pspnet_body_bytes_budget {bodies.capacity}",
            ]
        lines += ["# HELP process_resident_memory_bytes Resident memory size in bytes.",
                  "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {rss_bytes()}",
                  "# HELP process_start_time_seconds Start time of the process since the epoch.",
                  "# TYPE process_start_time_seconds gauge", f"process_start_time_seconds {self.started:.3f}"]
        return "\n".join(lines) + "\n"
