"""The bot's Prometheus metrics: answers (counted by `MeteredEngine`), their latency,
requests in flight, HTTP requests, and what the database and the engine hold."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from storage import Database

from ..engine_base import GenerationEngine

log = logging.getLogger(__name__)

# the classic text format that generate_latest() writes, which every Prometheus reads
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class ServiceMetrics:
    """The bot's Prometheus metrics, in a registry of their own (one per server)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.answers = Counter("bot_answers", "Answers the engine finished (Discord, console "
                               "and API), by adapter and outcome.", ["adapter", "outcome"],
                               registry=r)
        self.answer_tokens = Counter("bot_answer_tokens", "Tokens generated in answers.",
                                     ["adapter"], registry=r)
        self.latency = Histogram("bot_answer_latency_seconds", "Time from a request's "
                                 "submission to its last token (answers that ended well).",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.in_flight = Gauge("bot_engine_requests_in_flight", "Requests submitted to the "
                               "engine and not finished: queued or generating.", registry=r)
        self.http_requests = Counter("bot_http_requests", "HTTP requests served, by route "
                                     "and status code.", ["route", "status"], registry=r)
        self.adapters_loaded = Gauge("bot_engine_adapters_loaded", "Adapter versions loaded "
                                     "in the engine.", registry=r)
        self.stored = Gauge("bot_stored", "Rows in the database: answers, votes, adapters, "
                            "training runs (all time).", ["kind"], registry=r)
        self.review_pairs = Gauge("bot_review_pairs", "Review candidates by status.",
                                  ["status"], registry=r)
        self.training_running = Gauge("bot_training_running", "1 while a training run holds "
                                      "the host's training lock.", registry=r)
        self.database_up = Gauge("bot_database_up", "1 when the last scrape could read the "
                                 "database.", registry=r)

    async def refresh(self, engine: GenerationEngine, db: Database) -> None:
        """Read the numbers that live in the database and the engine (at scrape time)."""
        self.adapters_loaded.set(len(engine.loaded_adapters()))
        try:
            stats = await db.stats()
            lock = await db.training_lock()
        except Exception as exc:  # a metrics scrape must still answer
            log.warning("metrics: the database could not be read (%s)", exc)
            self.database_up.set(0)
            return
        self.database_up.set(1)
        for kind in ("answers", "votes", "adapters", "runs"):
            self.stored.labels(kind).set(stats[kind])
        for status in ("pending", "approved", "rejected"):
            self.review_pairs.labels(status).set(stats[status])
        self.training_running.set(0 if lock is None else 1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
