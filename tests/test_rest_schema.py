"""schemathesis against the live server's OpenAPI schema: generated requests for every
operation must never get a 5xx, and every response must match the documented status codes,
content types and schemas. Bounded: a few examples per operation, each run twice — once as
generated (mostly unknown ids: the 4xx paths) and once aimed at objects that exist (a fresh
memory per example, the seeded cube, a real job, the served models: the 2xx paths)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from live_server import LiveServer
from memosys.config import Settings
from memosys.interface.server import ServerConfig, create_app
from memosys.system import MemOS

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
EXAMPLES = 5


@dataclass
class Target:
    url: str
    mos: MemOS
    job_id: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[Target]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("schema")), embedder=embedder)
    mos.create_cube("default")
    episodes = mos.add("default", messages=[{"role": "user", "content": "I live in Oslo"}])
    job = mos.reader.enqueue("default", [episodes[0].id])
    with LiveServer(create_app(mos, ServerConfig(max_body_bytes=256 * 1024))) as url:
        yield Target(url, mos, job.id)
    mos.close()


def _aim(case: schemathesis.Case, target: Target) -> None:
    """Point the case's path parameters (and the embedding model) at existing objects."""
    params = case.path_parameters or {}
    if "item_id" in params:
        params["item_id"] = target.mos.add("default", "Alice prefers tea")[0].id
    if "cube" in params:
        params["cube"] = "default"
    if "job_id" in params:
        params["job_id"] = target.job_id
    if "model" in params:
        params["model"] = "memosys"
    if isinstance(case.body, dict) and case.operation.path == "/v1/embeddings":
        case.body["model"] = target.mos.embedder.id
    if isinstance(case.body, dict) and case.operation.path == "/api/v1/feedback":
        case.body["item_id"] = target.mos.add("default", "Alice likes jazz")[0].id


def test_api_conforms_to_its_schema(target: Target) -> None:
    schema = schemathesis.openapi.from_url(f"{target.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if "chat" in operation.path:  # generates with the model: covered by its own tests
            continue
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=target.url, checks=CHECKS)
            _aim(case, target)
            case.call_and_validate(base_url=target.url, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 18
    assert not failures, "\n\n".join(failures)
