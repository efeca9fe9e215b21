"""Prometheus metrics of one REST app: its own registry (several apps in one process, as in
tests, never collide), request series from the middleware, and gauges read from the vault
at scrape time (memory counts per cube and state, background jobs per state)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from memosys.infra.vault.base import ItemFilter
from memosys.types import MemoryState

if TYPE_CHECKING:
    from memosys.system import MemOS

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _VaultCollector(Collector):
    def __init__(self, mos: MemOS) -> None:
        self.mos = mos

    def collect(self) -> Iterator[GaugeMetricFamily]:
        memories = GaugeMetricFamily("memosys_memories", "Memories per cube and state",
                                     labels=["cube", "state"])
        jobs = GaugeMetricFamily("memosys_jobs", "Background jobs per state (queue depth: "
                                 "queued)", labels=["state"])
        vault = self.mos.vault
        try:
            for cube in vault.list_cubes():
                for state in MemoryState:
                    n = vault.count(ItemFilter(cube_ids=(cube.id,), states=(state,)))
                    memories.add_metric([cube.name, state.value], n)
            for state, n in vault.count_jobs().items():
                jobs.add_metric([state], n)
        except Exception:  # a scrape must not fail because the database hiccupped
            log.exception("collecting vault metrics failed")
        yield memories
        yield jobs


class ServerMetrics:
    def __init__(self, mos: MemOS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_VaultCollector(mos))

    def render(self) -> bytes:
        return generate_latest(self.registry)
