"""LLM backend tests against the real SmolLM2 model and a real local HTTP server (no mocks).

The GGUF is dequantized once per test session into a session temp dir; every other load in
this module reads that cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from memosys.config import Settings
from memosys.errors import LLMError, MemosysError
from memosys.models.llm import ChatResult, clear_llm_cache, make_llm
from memosys.models.local_llm import (
    MANIFEST,
    MODEL_NAME,
    LocalLLM,
    default_cache_dir,
    smollm2_gguf_path,
)
from memosys.models.openai_llm import OpenAICompatibleLLM
from memosys.models.weights_cache import WeightsCache

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a short poem about the sea."}]

# A long, stable "memory" block: the kind of prefix activation memory turns into a KV cache.
BACKGROUND = "You are a helpful assistant for Alice. Facts about Alice: " + " ".join(
    f"Fact {i}: Alice's friend number {i} is called {name} and lives in {city}."
    for i, (name, city) in enumerate(
        [
            ("Bob", "Berlin"),
            ("Carol", "Cairo"),
            ("Dave", "Dublin"),
            ("Erin", "Edinburgh"),
            ("Frank", "Florence"),
            ("Grace", "Geneva"),
            ("Heidi", "Helsinki"),
            ("Ivan", "Istanbul"),
            ("Judy", "Jakarta"),
            ("Peggy", "Paris"),
        ]
    )
)


# The session's model (fixtures `llm_cache_dir`, `local`) comes from conftest.py.


# Greedy answers computed once and compared against by several tests (generation is the slow
# part of this module).
@pytest.fixture(scope="session")
def question_answer(local: LocalLLM) -> ChatResult:
    return local.chat(QUESTION, max_new_tokens=32)


@pytest.fixture(scope="session")
def story_answer(local: LocalLLM) -> ChatResult:
    return local.chat(STORY, max_new_tokens=24)


# ---------------------------------------------------------------------------- loading and cache


def test_first_load_dequantizes_and_writes_cache(local: LocalLLM, llm_cache_dir: Path) -> None:
    assert local.load_source == "gguf"
    for name in ("model.safetensors", "config.json", "tokenizer.json", MANIFEST):
        assert (llm_cache_dir / name).is_file(), name
    manifest = json.loads((llm_cache_dir / MANIFEST).read_text())
    gguf_sha = hashlib.sha256(smollm2_gguf_path().read_bytes()).hexdigest()
    assert manifest["fingerprint"] == gguf_sha == local.model_fingerprint
    # The temp directory the cache was built in was renamed into place, nothing left behind.
    assert sorted(p.name for p in llm_cache_dir.parent.iterdir()) == [MODEL_NAME]


def test_second_load_reads_cache_without_gguf(
    local: LocalLLM, llm_cache_dir: Path, question_answer: ChatResult
) -> None:
    # A GGUF path that does not exist: the only way to load is from the cache.
    other = LocalLLM(cache_dir=llm_cache_dir, gguf_path=llm_cache_dir / "absent.gguf").load()
    assert other.load_source == "cache"
    assert other.model_fingerprint == local.model_fingerprint
    assert other.chat(QUESTION, max_new_tokens=32) == question_answer
    # With the real GGUF present and unchanged, its size and mtime suffice: no re-read, no rebuild.
    again = LocalLLM(cache_dir=llm_cache_dir).load()
    assert again.load_source == "cache"


def test_touched_gguf_is_rehashed_not_rebuilt(local: LocalLLM, tmp_path: Path) -> None:
    # Same content under a different mtime (e.g. a reinstall): the sha256 still matches.
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in local.cache_dir.iterdir():
        os.link(f, cache / f.name)  # hard links: no 540 MB copy
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["gguf_mtime_ns"] = 1
    (cache / MANIFEST).unlink()  # break the hard link before rewriting
    (cache / MANIFEST).write_text(json.dumps(manifest))
    llm = LocalLLM(cache_dir=cache).load()
    assert llm.load_source == "cache"
    assert llm.model_fingerprint == local.model_fingerprint


def test_no_weights_anywhere(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(LLMError, match="weights not found"):
        LocalLLM(cache_dir=tmp_path / "none", gguf_path=missing).load()
    # A half-written cache (no manifest, as after a crash mid-copy) is not a cache.
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(LLMError, match="weights not found"):
        LocalLLM(cache_dir=half, gguf_path=missing).load()


def test_damaged_cache_without_gguf_is_an_error(local: LocalLLM, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in local.cache_dir.iterdir():
        if f.name != "config.json":
            os.link(f, cache / f.name)
    (cache / "config.json").write_text("{not json")
    with pytest.raises(LLMError, match="failed to load the model cache"):
        LocalLLM(cache_dir=cache, gguf_path=tmp_path / "missing.gguf").load()


def test_move_into_place_replaces_stale_cache(local: LocalLLM, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "junk").write_text("stale")
    built = tmp_path / ".cache.tmp-1"
    built.mkdir()
    for f in local.cache_dir.iterdir():
        os.link(f, built / f.name)
    WeightsCache(dest)._move_into_place(built, local.model_fingerprint)
    assert not built.exists() and not (dest / "junk").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert LocalLLM(cache_dir=dest, gguf_path=tmp_path / "x.gguf").load().load_source == "cache"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMOSYS_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "models" / MODEL_NAME
    assert default_cache_dir(tmp_path / "h") == tmp_path / "h" / "models" / MODEL_NAME
    assert LocalLLM().cache_dir == tmp_path / "models" / MODEL_NAME


# ---------------------------------------------------------------------------- chat and stream


def test_chat_is_deterministic(local: LocalLLM, question_answer: ChatResult) -> None:
    first = question_answer
    assert isinstance(first, ChatResult)
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    assert first.prompt_tokens == len(local.apply_chat_template(QUESTION))
    assert first.completion_tokens is not None and first.completion_tokens > 1
    assert local.chat(QUESTION, max_new_tokens=32) == first


def test_greedy_matches_transformers_generate(local: LocalLLM, story_answer: ChatResult) -> None:
    import torch

    ids = local.apply_chat_template(STORY)
    with torch.no_grad():
        out = local.model.generate(
            torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=2
        )
    expected = local.tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
    assert story_answer.text == expected
    assert story_answer.completion_tokens == 24 and story_answer.finish_reason == "length"


def test_stream_concatenates_to_chat(local: LocalLLM, story_answer: ChatResult) -> None:
    deltas = list(local.stream(STORY, max_new_tokens=24))
    assert len(deltas) > 5 and all(deltas)
    assert "".join(deltas) == story_answer.text


def test_stop_strings(local: LocalLLM, question_answer: ChatResult) -> None:
    result = local.chat(QUESTION, max_new_tokens=32, stop=["Paris", "never-appears"])
    assert result.finish_reason == "stop"
    assert result.text and "Paris" not in result.text
    assert question_answer.text.startswith(result.text + "Paris")
    assert "".join(local.stream(QUESTION, max_new_tokens=32, stop="Paris")) == result.text


def test_sampling_with_seed_is_reproducible(local: LocalLLM) -> None:
    a = local.chat(STORY, max_new_tokens=12, temperature=0.9, seed=7)
    b = local.chat(STORY, max_new_tokens=12, temperature=0.9, seed=7)
    assert a == b and a.text


def test_concurrent_chats_match_sequential(
    local: LocalLLM, question_answer: ChatResult, story_answer: ChatResult
) -> None:
    got: dict[str, ChatResult] = {}

    def worker(key: str, msgs: list[dict[str, str]], n: int) -> None:
        got[key] = local.chat(msgs, max_new_tokens=n)

    threads = [
        threading.Thread(target=worker, args=("q", QUESTION, 32)),
        threading.Thread(target=worker, args=("s", STORY, 24)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {"q": question_answer, "s": story_answer}


def test_bad_requests_fail_at_the_call(local: LocalLLM) -> None:
    bad_calls: list[dict[str, Any]] = [
        {"messages": []},
        {"messages": "hello"},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": QUESTION, "max_new_tokens": 0},
        {"messages": QUESTION, "temperature": -1.0},
        {"messages": QUESTION, "stop": [""]},
    ]
    for kwargs in bad_calls:
        with pytest.raises(LLMError):
            local.chat(**kwargs)
        with pytest.raises(LLMError):  # raised by stream() itself, before any iteration
            local.stream(**kwargs)
    assert issubclass(LLMError, MemosysError) and LLMError.code == "llm_error"


# ---------------------------------------------------------------------------- KV prefix cache


def _split(local: LocalLLM, question: str) -> tuple[list[int], int]:
    system = {"role": "system", "content": BACKGROUND}
    full = local.apply_chat_template([system, {"role": "user", "content": question}])
    prefix = local.tokenizer.apply_chat_template([system], tokenize=True, return_dict=False)
    assert full[: len(prefix)] == list(prefix)
    return full, len(prefix)


def test_prefix_cache_generation_is_identical(local: LocalLLM) -> None:
    full_a, k = _split(local, "Where does Peggy live?")
    full_b, k_b = _split(local, "Who lives in Geneva?")
    assert k == k_b and k > 150
    cache = local.prefill(full_a[:k])
    assert cache.get_seq_length() == k
    expected = []
    for full in (full_a, full_b):  # the same cache serves several questions
        expected.append(local.generate(full, max_new_tokens=16))
        reused = local.generate_from_cache(cache, k, full[k:], max_new_tokens=16)
        assert reused == expected[-1]
        assert reused.prompt_tokens == len(full)
        assert cache.get_seq_length() == k  # copied, never extended
    streamed = "".join(local.stream_from_cache(cache, k, full_a[k:], max_new_tokens=16))
    assert streamed == expected[0].text


def test_prefix_cache_is_validated(local: LocalLLM) -> None:
    full, k = _split(local, "Where does Bob live?")
    cache = local.prefill(full[:k])
    with pytest.raises(LLMError, match="prefix_len"):
        local.generate_from_cache(cache, k - 1, full[k - 1 :])
    with pytest.raises(LLMError, match="DynamicCache"):
        local.generate_from_cache(object(), k, full[k:])  # type: ignore[arg-type]
    with pytest.raises(LLMError, match="empty"):
        local.generate_from_cache(cache, k, [])
    with pytest.raises(LLMError, match="vocabulary"):
        local.generate_from_cache(cache, k, [10**9])
    with pytest.raises(LLMError):
        local.prefill([])


# ---------------------------------------------------------------------------- make_llm


def test_make_llm_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clear_llm_cache()
    try:
        default = make_llm(home=tmp_path)
        assert isinstance(default, LocalLLM) and not default.loaded
        assert default.cache_dir == tmp_path / "models" / MODEL_NAME
        assert make_llm(" Local ", home=tmp_path) is default  # one model per process
        assert make_llm("smollm2", cache_dir=tmp_path / "models" / MODEL_NAME) is default
        monkeypatch.setenv("MEMOSYS_LLM_BASE_URL", "http://127.0.0.1:9/v1")
        remote = make_llm("openai:some-model")
        assert isinstance(remote, OpenAICompatibleLLM)
        assert remote.id == "openai:some-model" and remote.base_url == "http://127.0.0.1:9/v1"
        assert make_llm("openai:some-model") is remote
        for bad in ("gpt", "openai:", "openai:   "):
            with pytest.raises(LLMError):
                make_llm(bad)
    finally:
        clear_llm_cache()


def test_settings_llm_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load(tmp_path).llm == "local"
    monkeypatch.setenv("MEMOSYS_LLM", "openai:m")
    monkeypatch.setenv("MEMOSYS_LLM_BASE_URL", "http://localhost:8000/v1")
    monkeypatch.setenv("MEMOSYS_LLM_CACHE_DIR", str(tmp_path / "w"))
    settings = Settings.load(tmp_path)
    assert settings.llm == "openai:m"
    assert settings.llm_base_url == "http://localhost:8000/v1"
    assert settings.llm_cache_dir == tmp_path / "w"


# ---------------------------------------------------------------------------- OpenAI-compatible


@dataclass
class _Server:
    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _make_handler(local: LocalLLM, log: list[dict[str, Any]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _sse(self, payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def do_POST(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            log.append(req)
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            if req["model"] == "broken":
                self._json(500, {"error": {"message": "the GPU caught fire", "type": "server"}})
                return
            kwargs = {
                "max_new_tokens": req.get("max_tokens", 256),
                "temperature": req.get("temperature", 0.0),
                "stop": req.get("stop"),
            }
            head = {"id": "chatcmpl-1", "created": int(time.time()), "model": req["model"]}
            if not req.get("stream"):
                result = local.chat(req["messages"], **kwargs)
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
                usage = {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                }
                self._json(
                    200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
                )
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunk = {**head, "object": "chat.completion.chunk"}
            first = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
            self._sse({**chunk, "choices": [first]})
            for delta in local.stream(req["messages"], **kwargs):
                piece = {"index": 0, "delta": {"content": delta}, "finish_reason": None}
                self._sse({**chunk, "choices": [piece]})
                if req["model"] == "dies-midway":
                    self._sse({"error": {"message": "worker lost", "type": "server"}})
                    return
            last = {"index": 0, "delta": {}, "finish_reason": "stop"}
            self._sse({**chunk, "choices": [last]})
            self._sse("[DONE]")

    return Handler


@pytest.fixture(scope="module")
def server(local: LocalLLM) -> Iterator[_Server]:
    log: list[dict[str, Any]] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(local, log))  # 0 = free port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield _Server(base_url=f"http://{host}:{port}/v1", requests=log)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_openai_chat_matches_local(server: _Server, question_answer: ChatResult) -> None:
    remote = OpenAICompatibleLLM("smollm2", base_url=server.base_url)  # keyless local server
    result = remote.chat(QUESTION, max_new_tokens=32, stop=["zzz"], seed=3)
    assert result == question_answer
    sent = server.requests[-1]
    assert sent["max_tokens"] == 32 and sent["stop"] == ["zzz"] and sent["seed"] == 3
    assert sent["messages"] == QUESTION and sent["stream"] is False


def test_openai_stream_matches_local(server: _Server, story_answer: ChatResult) -> None:
    remote = OpenAICompatibleLLM("smollm2", base_url=server.base_url, api_key="k")
    deltas = list(remote.stream(STORY, max_new_tokens=24))
    assert len(deltas) > 5
    assert "".join(deltas) == story_answer.text
    assert server.requests[-1]["stream"] is True


def test_openai_server_error_is_llm_error(server: _Server) -> None:
    remote = OpenAICompatibleLLM("broken", base_url=server.base_url, max_retries=0)
    with pytest.raises(LLMError, match="HTTP 500.*the GPU caught fire"):
        remote.chat(QUESTION)
    with pytest.raises(LLMError, match="the GPU caught fire"):
        remote.stream(QUESTION)
    with pytest.raises(LLMError):  # validated before any request is sent
        remote.chat([{"role": "user", "content": None}])  # type: ignore[dict-item]


def test_openai_error_inside_stream(server: _Server) -> None:
    remote = OpenAICompatibleLLM("dies-midway", base_url=server.base_url, max_retries=0)
    deltas = remote.stream(QUESTION, max_new_tokens=8)
    first = next(deltas)
    assert first
    with pytest.raises(LLMError, match="worker lost"):
        next(deltas)


def test_openai_unreachable_and_unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = OpenAICompatibleLLM(
        "m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5
    )
    with pytest.raises(LLMError, match="could not reach"):
        remote.chat(QUESTION)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="no API key"):
        OpenAICompatibleLLM("m")
