"""Prometheus metrics with a `mask` label (NAME@VERSION, or `base`), beside vLLM's own on the same /metrics.

They live in prometheus_client's default registry, which vLLM's /metrics route serves (vllm/v1/metrics/
prometheus.py `get_prometheus_registry`, v0.32) unless PROMETHEUS_MULTIPROC_DIR is set.
"""

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("maskserve_requests_total", "Inference requests by mask and HTTP status", ["mask", "status"])
TOKENS = Counter("maskserve_generated_tokens_total", "Completion tokens generated, by mask", ["mask"])
LATENCY = Histogram("maskserve_request_seconds", "Request latency, by mask", ["mask"], buckets=_LATENCY_BUCKETS)
TTFT = Histogram("maskserve_time_to_first_token_seconds", "Streaming time to first token, by mask", ["mask"],
                 buckets=_LATENCY_BUCKETS)
MASKS_LOADED = Gauge("maskserve_masks_loaded", "Masks loaded into the engine's workers")
MASK_EVICTIONS = Counter("maskserve_mask_evictions_total", "Masks the workers evicted to make room for a load")
MASK_LOAD_SECONDS = Histogram("maskserve_mask_load_seconds", "Time to load a mask into the workers",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
