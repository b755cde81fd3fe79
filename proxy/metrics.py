"""Prometheus metrics: requests, errors, latency per pipeline stage and for the upstream, tokens."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One registry per app, so that several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rapport_requests", "Requests handled", ["endpoint", "status"], registry=self.registry
        )
        self.errors = Counter("rapport_errors", "Error responses", ["endpoint", "type"], registry=self.registry)
        self.latency = Histogram(
            "rapport_request_seconds", "End-to-end latency", ["endpoint"], buckets=_BUCKETS, registry=self.registry
        )
        self.stage_latency = Histogram(
            "rapport_stage_seconds", "Pipeline stage latency", ["stage"], buckets=_BUCKETS, registry=self.registry
        )
        self.upstream_latency = Histogram(
            "rapport_upstream_seconds", "Upstream call latency", ["model"], buckets=_BUCKETS, registry=self.registry
        )
        self.tokens = Counter("rapport_tokens", "Tokens reported by upstreams", ["model", "kind"], registry=self.registry)
        # Calls that the shared limiter (Redis) could not answer, so were limited per replica instead.
        self.limiter_degraded = Counter(
            "rapport_limiter_degraded",
            "Limit decisions taken per replica because the shared limiter was unavailable",
            ["op"],
            registry=self.registry,
        )

        # Exchanges answered but not recorded because a stage's store was down (while retrieving, with
        # degrade_on_store_failure, or when recording after the response): dropped, never buffered on the
        # replica, so an operator sees how many were lost.
        self.recordings_lost = Counter(
            "rapport_recordings_lost",
            "Answered exchanges that could not be recorded (store unavailable) and were dropped",
            ["stage"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
