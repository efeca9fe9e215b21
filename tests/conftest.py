"""Shared fixtures: the embedder loads once per session; every test gets a fresh home."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from memosys.config import Settings  # noqa: E402
from memosys.infra.vault.base import Vault  # noqa: E402
from memosys.infra.vault.sqlite import SQLiteVault  # noqa: E402
from memosys.models.embed import Embedder, make_embedder  # noqa: E402
from memosys.system import MemOS  # noqa: E402
from pg_fixture import SERVER as PG  # noqa: E402

if TYPE_CHECKING:
    from memosys.models.local_llm import LocalLLM


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return make_embedder("minilm")


@pytest.fixture(scope="session")
def llm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memosys.models.local_llm import MODEL_NAME

    return tmp_path_factory.mktemp("llm") / MODEL_NAME


@pytest.fixture(scope="session")
def local(llm_cache_dir: Path) -> LocalLLM:
    """The session's SmolLM2, dequantized once into a session temp dir (test_llm checks that
    first load); every test that needs the real model shares it."""
    from memosys.models.local_llm import LocalLLM

    llm = LocalLLM(cache_dir=llm_cache_dir)
    assert not llm.loaded and not llm_cache_dir.exists()  # constructing loads nothing
    return llm.load()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def mos(home: Path, embedder: Embedder) -> Iterator[MemOS]:
    runtime = MemOS(Settings.load(home), embedder=embedder)
    yield runtime
    runtime.close()


# The backend-agnostic suite runs once per backend listed here; the PostgreSQL backend
# joins by adding its factory.
BACKENDS: dict[str, Callable[[Path], Vault]] = {
    "sqlite": lambda root: SQLiteVault(root / "vault.db"),
    "postgres": lambda root: _postgres_vault(),
}


def _postgres_vault() -> Vault:
    from memosys.infra.vault.postgres import PostgresVault

    return PostgresVault(PG.new_database(), pool_size=4)


@pytest.fixture(scope="session", autouse=True)
def pg_server() -> Iterator[object]:
    """The session's embedded PostgreSQL (see tests/pg_fixture.py): started on first use,
    stopped here at the end of the session."""
    yield PG
    PG.stop()


@pytest.fixture(params=sorted(BACKENDS))
def vault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Vault]:
    store = BACKENDS[request.param](tmp_path)
    yield store
    store.close()
