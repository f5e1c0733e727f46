"""Prometheus metrics, one registry per app so that tests can build several apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Request counts and latency per route template, model time, batch sizes and queue depths."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("icseg_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram(
            "icseg_request_seconds", "HTTP request latency", ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.model_seconds = Histogram(
            "icseg_model_seconds", "time in the model per call", ["kind"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "icseg_batch_queries", "queries per micro-batched forward pass", buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue_depth = Gauge("icseg_queue_depth", "queries waiting for the model", registry=r)
        self.jobs = Gauge("icseg_jobs", "jobs by state", ["state"], registry=r)
        self.prompts_created = Counter("icseg_prompts_created", "prompts stored", registry=r)
        self.model_ready = Gauge("icseg_model_ready", "1 when the model is loaded", registry=r)
