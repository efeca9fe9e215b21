"""Webhook delivery: a background thread that reads the outbox and POSTs signed events.

Durable and at-least-once: what to deliver is in the database (each webhook's cursor and
`event_deliveries`), so a restarted process carries on where the last one stopped, and a
delivery whose worker died is taken again once its lease runs out. Receivers deduplicate
on the event id. Several processes may each run a dispatcher on one database; a delivery
is attempted by one of them at a time (see events_sql.SQLEventStore.claim).

Never on the write path: writes only insert outbox rows. HTTP calls have a timeout, run on
a small pool (a hanging receiver holds one worker, not the others), and a failed attempt
is retried with exponential backoff and jitter until `max_attempts`, then dead-lettered.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from memosys.infra.events import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    EVENT_ID_HEADER,
    EVENT_KIND_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Event,
    sign,
)
from memosys.infra.vault.events_sql import Claim, SQLEventStore, Webhook

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 8
    base_delay: float = 2.0
    """Seconds before the first retry; doubles with each failed attempt."""
    max_delay: float = 3600.0
    timeout: float = 10.0
    """Per HTTP call (connect, read, write, pool)."""
    poll: float = 0.5
    """Seconds between looks at the outbox when there is nothing to do."""
    workers: int = 4
    """Concurrent HTTP calls."""
    batch: int = 200

    @property
    def lease(self) -> float:
        """How long a claimed delivery stays ours: longer than one attempt can take."""
        return self.timeout * 2 + 30.0

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt `attempt` (1-based): half fixed, half random, so
        failing deliveries spread out instead of retrying in lockstep."""
        delay = min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)


def body_of(event: Event) -> bytes:
    return json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":")).encode()


class Dispatcher:
    def __init__(self, store: SQLEventStore, acceptor: Callable[[Webhook], Callable[[Event],
                 bool]], policy: DeliveryPolicy | None = None) -> None:
        self.store = store
        self.acceptor = acceptor
        self.policy = policy or DeliveryPolicy()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=self.policy.workers,
                                        thread_name_prefix="memosys-webhook")
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._client = httpx.Client(timeout=httpx.Timeout(self.policy.timeout),
                                    follow_redirects=False,
                                    headers={"User-Agent": "memosys-webhooks"})

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Dispatcher:
        self._thread = threading.Thread(target=self._run, name="memosys-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        # a call in flight ends at its own timeout; its lease lets another worker retry
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def wake(self) -> None:
        """Look at the outbox now (e.g. right after a write in this process)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a database hiccup must not kill the thread
                _log.exception("event dispatch failed; retrying")
                worked = False
            if not worked:
                self._wake.wait(self.policy.poll)
                self._wake.clear()

    def step(self) -> bool:
        """Fan new events out to webhooks and start due deliveries; True if it did any."""
        worked = False
        last = self.store.last_seq()
        for hook in self.store.list_webhooks():
            if hook.active and hook.cursor < last and self.store.fan_out(
                    hook.id, self.acceptor(hook), self.policy.batch):
                worked = True
        with self._busy_lock:
            free = self.policy.workers - self._busy
        # claim only what can start now, so leases do not run out in a queue
        for claim in self.store.claim(free, self.policy.lease):
            with self._busy_lock:
                self._busy += 1
            self._pool.submit(self._deliver, claim)
            worked = True
        return worked

    def _deliver(self, claim: Claim) -> None:
        try:
            self.deliver(claim)
        except Exception:
            if self._stop.is_set():  # shut down mid-call: the lease hands it to a retry
                _log.debug("delivery %s interrupted by shutdown", claim.delivery.id)
            else:
                _log.exception("recording a webhook delivery failed")
        finally:
            with self._busy_lock:
                self._busy -= 1
            self._wake.set()

    def deliver(self, claim: Claim) -> None:
        """One attempt: POST, then log it and settle the delivery."""
        body = body_of(claim.event)
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(claim.webhook.secret, ts, body),
            TIMESTAMP_HEADER: str(ts),
            EVENT_ID_HEADER: claim.event.id,
            EVENT_KIND_HEADER: claim.event.kind,
            DELIVERY_HEADER: claim.delivery.id,
            ATTEMPT_HEADER: str(claim.delivery.attempts),
        }
        status: int | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            # streamed and never read: a receiver's answer body cannot fill our memory
            with self._client.stream("POST", claim.webhook.url, content=body,
                                     headers=headers) as response:
                status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = (time.perf_counter() - started) * 1000
        attempt = claim.delivery.attempts
        if error is None:
            self.store.finish(claim, status_code=status, error=None, duration_ms=duration_ms,
                              outcome="delivered")
            return
        allowed = self.policy.max_attempts + self.store.retry_budget(claim.delivery.id)
        if attempt >= allowed:
            self.store.finish(claim, status_code=status, error=error, duration_ms=duration_ms,
                              outcome="dead")
        else:
            self.store.finish(claim, status_code=status, error=error, duration_ms=duration_ms,
                              outcome="pending", next_at=time.time() + self.policy.backoff(attempt))
