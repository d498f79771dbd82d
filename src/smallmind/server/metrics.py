"""Server metrics in the Prometheus text format (GET /metrics): counters, gauges read at scrape
time, and histograms of time to first token and request latency. Thread-safe: the asyncio app
records, a scrape reads."""

import threading
import time

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKENS_PER_SECOND_WINDOW = 10.0   # seconds the rate of tokens sent to clients is averaged over


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{upper:g}"}} {n}' for upper, n in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """What /metrics reports; `gauges` is called at scrape time for the engine's queue depth,
    active sequences, tokens generated (those of cancelled requests included) and the bytes its
    prefix cache holds."""

    def __init__(self, gauges):
        self.lock = threading.Lock()
        self.gauges = gauges
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.cancelled_requests = 0
        self.ttft = Histogram()
        self.latency = Histogram()
        self.recent: list[tuple[float, int]] = []   # (time, tokens) within the rate window

    def request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1

    def cancelled(self) -> None:
        with self.lock:
            self.cancelled_requests += 1

    def first_token(self, seconds: float) -> None:
        with self.lock:
            self.ttft.observe(seconds)

    def delivered(self, tokens: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.recent.append((now, tokens))
            self._trim(now)

    def finished(self, prompt_tokens: int, cached_tokens: int, seconds: float) -> None:
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.cached_tokens += cached_tokens
            self.latency.observe(seconds)

    def _trim(self, now: float) -> None:
        cut = 0
        while cut < len(self.recent) and self.recent[cut][0] < now - TOKENS_PER_SECOND_WINDOW:
            cut += 1
        del self.recent[:cut]

    def render(self) -> str:
        queue_depth, active, generated, cache_bytes = self.gauges()
        now = time.monotonic()
        with self.lock:
            self._trim(now)
            rate = sum(n for _, n in self.recent) / TOKENS_PER_SECOND_WINDOW
            lines = ["# HELP smallmind_requests_total HTTP requests answered, by endpoint and status",
                     "# TYPE smallmind_requests_total counter"]
            lines += [f'smallmind_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += [
                "# HELP smallmind_prompt_tokens_total prompt tokens of finished requests",
                "# TYPE smallmind_prompt_tokens_total counter",
                f"smallmind_prompt_tokens_total {self.prompt_tokens}",
                "# HELP smallmind_prompt_tokens_cached_total prompt tokens of finished requests whose KV was reused",
                "# TYPE smallmind_prompt_tokens_cached_total counter",
                f"smallmind_prompt_tokens_cached_total {self.cached_tokens}",
                "# HELP smallmind_generated_tokens_total tokens generated",
                "# TYPE smallmind_generated_tokens_total counter",
                f"smallmind_generated_tokens_total {generated}",
                "# HELP smallmind_cancelled_requests_total requests whose client went away before the end",
                "# TYPE smallmind_cancelled_requests_total counter",
                f"smallmind_cancelled_requests_total {self.cancelled_requests}",
                "# HELP smallmind_queue_depth requests waiting for a slot",
                "# TYPE smallmind_queue_depth gauge",
                f"smallmind_queue_depth {queue_depth}",
                "# HELP smallmind_active_sequences sequences prefilling or decoding",
                "# TYPE smallmind_active_sequences gauge",
                f"smallmind_active_sequences {active}",
                "# HELP smallmind_prefix_cache_bytes KV of finished conversations kept beyond the slots",
                "# TYPE smallmind_prefix_cache_bytes gauge",
                f"smallmind_prefix_cache_bytes {cache_bytes}",
                f"# HELP smallmind_tokens_per_second tokens per second sent to clients over the last "
                f"{TOKENS_PER_SECOND_WINDOW:g} s",
                "# TYPE smallmind_tokens_per_second gauge",
                f"smallmind_tokens_per_second {rate:.3f}",
                "# HELP smallmind_time_to_first_token_seconds from request to its first text",
                "# TYPE smallmind_time_to_first_token_seconds histogram",
                *self.ttft.lines("smallmind_time_to_first_token_seconds"),
                "# HELP smallmind_request_latency_seconds from request to its last token",
                "# TYPE smallmind_request_latency_seconds histogram",
                *self.latency.lines("smallmind_request_latency_seconds"),
            ]
        return "\n".join(lines) + "\n"
