"""Embedder tests against the real bundled models and a real local HTTP endpoint (no mocks)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from memosys.models.embed import (
    EmbedderError,
    MiniLMEmbedder,
    OpenAIEmbedder,
    USEMultilingualEmbedder,
    make_embedder,
)

SENTENCES = [
    "Caroline went to an LGBTQ support group on Saturday.",
    "Melanie painted a sunrise over the lake last year.",
    "I'm thinking about adopting a dog from the shelter next month.",
    "The quarterly revenue report is due on Friday.",
    "We had pizza and watched a movie with the kids.",
    "",
    "ok",
    "Honestly, running every morning has really helped me clear my head "
    "and deal with stress at work, especially since the big promotion.",
]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    emb = make_embedder("minilm")
    assert isinstance(emb, MiniLMEmbedder)
    return emb


@pytest.fixture(scope="module")
def use() -> USEMultilingualEmbedder:
    emb = make_embedder("use")
    assert isinstance(emb, USEMultilingualEmbedder)
    return emb


# ---------------------------------------------------------------------------- MiniLM


def test_minilm_is_lazy_and_cached() -> None:
    fresh = MiniLMEmbedder()
    assert not fresh.loaded  # constructing must not load ~90 MB of weights
    assert make_embedder(None) is make_embedder("minilm") is make_embedder(" MiniLM-L6-v2 ")
    assert make_embedder("minilm").id == "minilm-l6-v2"


def test_minilm_shape_dtype_normalised(minilm: MiniLMEmbedder) -> None:
    vecs = minilm.embed(SENTENCES)
    assert minilm.dim == 384
    assert vecs.shape == (len(SENTENCES), 384)
    assert vecs.dtype == np.float32
    assert np.all(np.isfinite(vecs))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_minilm_semantics(minilm: MiniLMEmbedder) -> None:
    anchor, para, unrelated = minilm.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market crashed after the announcement.",
        ]
    )
    assert _cos(anchor, para) > _cos(anchor, unrelated) + 0.3
    # Published all-MiniLM-L6-v2 value for this pair; catches wrong pooling/normalisation.
    assert _cos(anchor, para) == pytest.approx(0.7553, abs=2e-3)


def test_minilm_batching_matches_one_by_one(minilm: MiniLMEmbedder) -> None:
    # 100 texts of mixed lengths span two batches of 64 and force heavy padding.
    texts = [f"{s} (variant {i})" * (1 + i % 3) for i, s in enumerate(SENTENCES * 13)][:100]
    batched = minilm.embed(texts)
    single = np.stack([minilm.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # Order must be preserved despite the internal length sort.
    np.testing.assert_allclose(minilm.embed(texts[::-1]), batched[::-1], atol=1e-5)


def test_minilm_truncates_long_input(minilm: MiniLMEmbedder) -> None:
    long_text = "memory " * 2000
    vec = minilm.embed([long_text])
    assert vec.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, atol=1e-5)


def test_minilm_empty_and_bad_input(minilm: MiniLMEmbedder) -> None:
    empty = minilm.embed([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32
    with pytest.raises(EmbedderError, match="single str"):
        minilm.embed("not a list")
    with pytest.raises(EmbedderError, match="item 1"):
        minilm.embed(["ok", 3])  # type: ignore[list-item]


def test_minilm_concurrent_first_use_loads_once(minilm: MiniLMEmbedder) -> None:
    fresh = MiniLMEmbedder()
    results: list[np.ndarray] = []
    errors: list[BaseException] = []
    seen_models: list[int] = []

    def worker() -> None:
        try:
            results.append(fresh.embed(SENTENCES[:3]))
            seen_models.append(id(fresh._model))
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(seen_models)) == 1
    expected = minilm.embed(SENTENCES[:3])
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


# ---------------------------------------------------------------------------- USE


def test_use_cross_lingual(use: USEMultilingualEmbedder) -> None:
    en, zh, unrelated = use.embed(
        [
            "The cat is sleeping on the sofa.",
            "猫在沙发上睡觉。",
            "The stock market fell sharply today.",
        ]
    )
    assert use.id == "use-multilingual-v3"
    assert _cos(en, zh) > _cos(en, unrelated) + 0.3
    assert _cos(zh, en) > _cos(zh, unrelated) + 0.3


def test_use_shape_and_empty(use: USEMultilingualEmbedder) -> None:
    vecs = use.embed(SENTENCES)
    assert vecs.shape == (len(SENTENCES), 512)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert use.embed([]).shape == (0, 512)
    assert make_embedder("use-multilingual-v3") is use


# ---------------------------------------------------------------------------- OpenAI-compatible


@dataclass
class _Server:
    base_url: str
    requests: list[dict[str, object]] = field(default_factory=list)


def _make_handler(minilm: MiniLMEmbedder, log: list[dict[str, object]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        """POST /v1/embeddings; the requested model name selects the behaviour under test."""

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest output clean

        def _reply(self, status: int, payload: dict[str, object]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            if self.path != "/v1/embeddings":
                self._reply(404, {"error": {"message": f"no route {self.path}"}})
                return
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            req["authorization"] = self.headers.get("Authorization")
            log.append(req)
            model = req["model"]
            if model == "broken":
                self._reply(
                    500,
                    {"error": {"message": "model shard 3 is on fire", "type": "server_error"}},
                )
                return
            texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
            vecs = minilm.embed(texts)
            if model == "wrong-dim":
                vecs = vecs[:, :100]
            if model == "unnormalised":
                vecs = vecs * 3.0
            data = []
            # Reverse order on purpose: clients must reorder by "index".
            for i in reversed(range(len(texts))):
                if req.get("encoding_format") == "base64":
                    emb: object = base64.b64encode(vecs[i].astype(np.float32).tobytes()).decode()
                else:
                    emb = vecs[i].tolist()
                data.append({"object": "embedding", "index": i, "embedding": emb})
            self._reply(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {"prompt_tokens": 0, "total_tokens": 0},
                },
            )

    return Handler


@pytest.fixture(scope="module")
def server(minilm: MiniLMEmbedder) -> Iterator[_Server]:
    log: list[dict[str, object]] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(minilm, log))  # 0 = free port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield _Server(base_url=f"http://{host}:{port}/v1", requests=log)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_openai_matches_minilm(server: _Server, minilm: MiniLMEmbedder) -> None:
    emb = make_embedder("openai:mini", base_url=server.base_url, api_key="sk-test")
    assert isinstance(emb, OpenAIEmbedder)
    assert emb.id == "openai:mini"
    assert emb.dim == 384  # discovered with a probe request
    vecs = emb.embed(SENTENCES[:5] + ["ok"])
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, minilm.embed(SENTENCES[:5] + ["ok"]), atol=1e-5)
    assert server.requests[-1]["authorization"] == "Bearer sk-test"
    assert server.requests[-1]["encoding_format"] == "float"
    assert emb.embed([]).shape == (0, 384)


def test_openai_batches_and_renormalises(server: _Server, minilm: MiniLMEmbedder) -> None:
    emb = OpenAIEmbedder("unnormalised", base_url=server.base_url, api_key="k", dim=384)
    texts = [f"memory number {i}" for i in range(260)]
    before = len(server.requests)
    vecs = emb.embed(texts)
    sizes = [len(r["input"]) for r in server.requests[before:]]  # type: ignore[arg-type]
    assert sizes == [256, 4]  # dim given -> no probe; batches of 256
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vecs, minilm.embed(texts), atol=1e-5)


def test_openai_env_config(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/unused")
    monkeypatch.setenv("MEMOSYS_OPENAI_BASE_URL", server.base_url)
    monkeypatch.delenv("MEMOSYS_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    emb = make_embedder("openai:envmodel", dim=384)
    assert emb is make_embedder("openai:envmodel", dim=384)
    assert emb.embed(["hello"]).shape == (1, 384)
    assert server.requests[-1]["authorization"] == "Bearer sk-from-env"
    assert server.requests[-1]["model"] == "envmodel"


def test_openai_keyless_local_server(server: _Server) -> None:
    # Self-hosted endpoints often need no key; a placeholder keeps the openai client happy.
    emb = OpenAIEmbedder("mini", base_url=server.base_url, dim=384)
    assert emb.embed(["hello"]).shape == (1, 384)
    assert server.requests[-1]["authorization"] == "Bearer EMPTY"


def test_openai_server_error(server: _Server) -> None:
    emb = OpenAIEmbedder("broken", base_url=server.base_url, api_key="k", dim=384, max_retries=0)
    with pytest.raises(EmbedderError, match=r"HTTP 500.*model shard 3 is on fire"):
        emb.embed(["hello"])
    # Dimension discovery goes through the same error path.
    probe = OpenAIEmbedder("broken", base_url=server.base_url, api_key="k", max_retries=0)
    with pytest.raises(EmbedderError, match="on fire"):
        _ = probe.dim


def test_openai_wrong_dim(server: _Server) -> None:
    emb = OpenAIEmbedder("wrong-dim", base_url=server.base_url, api_key="k", dim=384)
    with pytest.raises(EmbedderError, match=r"\[100\]-dim.*expected 384"):
        emb.embed(["hello", "world"])


def test_openai_unreachable() -> None:
    emb = OpenAIEmbedder(
        "m", base_url="http://127.0.0.1:9/v1", api_key="k", dim=8, max_retries=0, timeout=2.0
    )
    with pytest.raises(EmbedderError, match="could not reach"):
        emb.embed(["hello"])


# ---------------------------------------------------------------------------- specs


def test_unknown_spec() -> None:
    with pytest.raises(EmbedderError, match="unknown embedder spec 'bert-large'") as info:
        make_embedder("bert-large")
    for valid in ("minilm", "use-multilingual-v3", "openai:<model>"):
        assert valid in str(info.value)


def test_bad_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EmbedderError, match="model name"):
        make_embedder("openai:")
    with pytest.raises(EmbedderError, match="384-dim"):
        make_embedder("minilm", dim=512)
    for var in (
        "MEMOSYS_OPENAI_BASE_URL",
        "MEMOSYS_OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(EmbedderError, match="no API key"):
        make_embedder("openai:text-embedding-3-small")


def test_memoized_embedder_returns_the_same_vectors_without_recomputing(minilm) -> None:
    from memosys.models.embed import MemoizedEmbedder

    calls: list[int] = []

    class Counting:
        id, dim = minilm.id, minilm.dim

        def embed(self, texts):
            calls.append(len(texts))
            return minilm.embed(texts)

    memo = MemoizedEmbedder(Counting(), capacity=3)
    first = memo.embed(["a cat", "a dog", "a cat"])
    assert calls == [2]  # duplicates inside one call are embedded once
    np.testing.assert_allclose(first, minilm.embed(["a cat", "a dog", "a cat"]), atol=1e-6)
    again = memo.embed(["a dog", "a bird"])
    assert calls == [2, 1]
    np.testing.assert_array_equal(again[0], first[1])
    memo.embed(["x", "y", "z"])  # evicts everything older than the last three texts
    memo.embed(["a cat"])
    assert calls == [2, 1, 3, 1]
    memo.clear()
    memo.embed(["a cat"])
    assert calls == [2, 1, 3, 1, 1]
    assert memo.embed([]).shape == (0, minilm.dim)
    assert (memo.id, memo.dim) == (minilm.id, minilm.dim)
