"""`memosys.Client`: the Memory API over HTTP, with the same methods, arguments, return
types and typed errors as the embedded `memosys.MemOS`, so the same code runs embedded or
against `memosys serve`:

    mem = MemOS.open()                                      # embedded
    mem = Client("http://127.0.0.1:8000", api_key="...")   # remote
    mem.create_cube("alice")
    mem.add("alice", "Alice prefers tea")
    hits = mem.search("what does Alice drink?", "alice")

Differences, by necessity: `progress` callbacks are not supported (the server does the
work); `purge` of several ids is one request per id (each atomic, not all together);
`share_cube`, `audit_log` and `scheduler_decisions` return plain dicts (the JSON).
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic_core import to_jsonable_python

from memosys import errors
from memosys.infra.vault.base import Job, VersionRecord
from memosys.operation.retrieval import SearchHit
from memosys.types import MemCube, MemoryItem, MemoryType, Visibility

if TYPE_CHECKING:
    from memosys.operation.chat import ChatResult

_ERRORS: dict[str, type[errors.MemosysError]] = {
    "invalid_input": errors.ValidationError,
    "payload_too_large": errors.ValidationError,
    "not_found": errors.NotFoundError,
    "conflict": errors.ConflictError,
    "embedder_mismatch": errors.EmbedderMismatchError,
    "storage_error": errors.StorageError,
    "embedder_error": errors.EmbedderError,
    "llm_error": errors.LLMError,
    "unauthenticated": errors.AuthenticationError,
    "permission_denied": errors.PermissionDeniedError,
    "sensitive_data": errors.SensitiveDataError,
    "refused_by_rule": errors.RefusedByRuleError,
}


class RemoteError(errors.MemosysError):
    """A server error without a more specific memosys type (e.g. a 5xx)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class AddedItems(list[MemoryItem]):
    """What `add` returns: the stored items, plus `.job` (an extraction queued with
    `infer=True, wait=False`) and `.extraction` (its summary, when waited for)."""

    def __init__(self, items: Sequence[MemoryItem], job: Job | None,
                 extraction: dict[str, Any] | None) -> None:
        super().__init__(items)
        self.job = job
        self.extraction = extraction


def _raise(code: str, message: str, status: int) -> errors.MemosysError:
    cls = _ERRORS.get(code)
    return cls(message) if cls is not None else RemoteError(code, message, status)


def _error_of(resp: httpx.Response) -> errors.MemosysError:
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "error", f"HTTP {resp.status_code}: {resp.text[:500]}"
    return _raise(code, message, resp.status_code)


def _chat_result(data: dict[str, Any]) -> ChatResult:
    from memosys.operation.chat import ChatResult, Usage
    from memosys.operation.scheduler import MemoryDecision

    usage = data["usage"]
    return ChatResult(
        text=data["text"], decisions=[MemoryDecision(**d) for d in data["decisions"]],
        usage=Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"),
                    usage.get("cached_tokens", 0)),
        finish_reason=data["finish_reason"], model=data["model"], cube_id=data["cube_id"],
        cube_ids=data["cube_ids"], scheduling_id=data["scheduling_id"],
        events=data["events"], activation=data["activation"], written=data["written"],
        job_id=data["job_id"], ttft_s=data["ttft_s"])


class RemoteChatStream(Iterator[str]):
    """`Client.chat(stream=True)`, like `ChatStream`: iterate for text deltas; once
    exhausted `.result` is the `ChatResult`. `close()` early stops the answer (the server
    then writes nothing back)."""

    def __init__(self, http: httpx.Client, body: dict[str, Any]) -> None:
        self._cm = http.stream("POST", "/api/v1/chat", json=body)
        resp = self._cm.__enter__()
        if not resp.is_success:
            resp.read()
            self._cm.__exit__(None, None, None)
            raise _error_of(resp)
        self._lines = resp.iter_lines()
        self._result: ChatResult | None = None
        self._done = False

    def __iter__(self) -> RemoteChatStream:
        return self

    def __next__(self) -> str:
        while not self._done:
            line = next(self._lines, None)
            if line is None or line == "data: [DONE]":
                self.close()
                break
            if not line.startswith("data: "):
                continue
            event = jsonlib.loads(line.removeprefix("data: "))
            if "delta" in event:
                return str(event["delta"])
            if "result" in event:
                self._result = _chat_result(event["result"])
            elif "error" in event:
                self.close()
                raise _raise(str(event["error"]["code"]), str(event["error"]["message"]), 200)
        raise StopIteration

    @property
    def result(self) -> ChatResult:
        if self._result is None:
            raise errors.LLMError("the chat stream has not finished yet: iterate it to the "
                                  "end first")
        return self._result

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._cm.__exit__(None, None, None)


def _job(data: dict[str, Any]) -> Job:
    return Job(id=data["id"], kind=data["kind"], cube_id=data["cube_id"],
               payload=data["payload"], state=data["state"], attempts=data["attempts"],
               created_at=datetime.fromisoformat(data["created_at"]),
               updated_at=datetime.fromisoformat(data["updated_at"]),
               result=data["result"], error=data["error"])


def _filters(filters: Any) -> dict[str, Any] | None:
    if filters is None:
        return None
    raw = asdict(filters) if is_dataclass(filters) else dict(filters)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in raw.items()}


class Client:
    """HTTP client of the REST service (thread-safe: one connection pool per client)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 *, timeout: float = 120.0, transport: httpx.BaseTransport | None = None
                 ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------
    def _call(self, method: str, path: str, *, json: Any = None,
              params: dict[str, Any] | None = None) -> Any:
        body = to_jsonable_python(json) if json is not None else None
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, f"/api/v1{path}", json=body,
                                      params=to_jsonable_python(query))
        except httpx.HTTPError as exc:
            raise errors.StorageError(f"memosys server unreachable: {exc}") from None
        if resp.is_success:
            return resp.json()
        raise _error_of(resp)

    def _pages(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        out: list[Any] = []
        offset: int | None = 0
        while offset is not None:
            page = self._call("GET", path, params={**(params or {}), "limit": 1000,
                                                   "offset": offset})
            out.extend(page["items"])
            offset = page["next_offset"]
        return out

    # --- cubes -----------------------------------------------------------------------
    def create_cube(self, name: str, *, owner: str | None = None,
                    description: str = "") -> MemCube:
        return MemCube.model_validate(self._call(
            "POST", "/cubes", json={"name": name, "owner": owner, "description": description}))

    def get_cube(self, cube: str) -> MemCube:
        return MemCube.model_validate(self._call("GET", f"/cubes/{_seg(cube)}"))

    def ensure_cube(self, name: str, *, owner: str | None = None) -> MemCube:
        try:
            return self.get_cube(name)
        except errors.NotFoundError:
            try:
                return self.create_cube(name, owner=owner)
            except errors.ConflictError:
                return self.get_cube(name)

    def list_cubes(self) -> list[MemCube]:
        return [MemCube.model_validate(c) for c in self._pages("/cubes")]

    def stats(self, cube: str | None = None) -> dict[str, Any]:
        names = [cube] if cube else [c.id for c in self.list_cubes()]
        return {"cubes": [self._call("GET", f"/cubes/{_seg(n)}/stats") for n in names]}

    # --- adding ----------------------------------------------------------------------
    def add(
        self,
        cube: str,
        text: str | None = None,
        *,
        messages: Sequence[Any] | None = None,
        memory_type: str | MemoryType | None = None,
        tags: Sequence[str] = (),
        user: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        document_uri: str | None = None,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
        owner: str | None = None,
        visibility: str | Visibility = Visibility.CUBE,
        metadata: dict[str, Any] | None = None,
        infer: bool = False,
        wait: bool = True,
    ) -> AddedItems:
        msgs = None
        if messages is not None:
            msgs = [m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else m
                    for m in messages]
        body = {"text": text, "messages": msgs, "memory_type": memory_type,
                "tags": list(tags), "user": user, "agent": agent, "session": session,
                "document_uri": document_uri, "valid_from": valid_from,
                "valid_to": valid_to, "owner": owner, "visibility": visibility,
                "metadata": metadata or {}, "infer": infer, "wait": wait}
        return self._added(self._call("POST", f"/cubes/{_seg(cube)}/memories",
                                      json={k: v for k, v in body.items() if v is not None}))

    def add_document(self, cube: str, document: str, *, uri: str, title: str | None = None,
                     max_chunk_chars: int | None = None, user: str | None = None,
                     session: str | None = None, tags: Sequence[str] = (),
                     infer: bool = False, wait: bool = True) -> AddedItems:
        """Like `MemOS.reader.add_document`: a document stored as chunks."""
        doc = {"content": document, "uri": uri, "title": title,
               "max_chunk_chars": max_chunk_chars}
        body = {"document": {k: v for k, v in doc.items() if v is not None}, "user": user,
                "session": session, "tags": list(tags), "infer": infer, "wait": wait}
        return self._added(self._call("POST", f"/cubes/{_seg(cube)}/memories",
                                      json={k: v for k, v in body.items() if v is not None}))

    @staticmethod
    def _added(data: dict[str, Any]) -> AddedItems:
        return AddedItems([MemoryItem.model_validate(i) for i in data["items"]],
                          _job(data["job"]) if data.get("job") else None,
                          data.get("extraction"))

    def job(self, job_id: str) -> Job:
        return _job(self._call("GET", f"/jobs/{_seg(job_id)}"))

    # --- reading ---------------------------------------------------------------------
    def get(self, item_id: str) -> MemoryItem:
        return MemoryItem.model_validate(self._call("GET", f"/memories/{_seg(item_id)}"))

    def history(self, item_id: str) -> list[VersionRecord]:
        return [
            VersionRecord(item=MemoryItem.model_validate(r["item"]), clock=r["clock"],
                          op=r["op"], at=datetime.fromisoformat(r["at"]))
            for r in self._pages(f"/memories/{_seg(item_id)}/history")
        ]

    def list(self, cube: str, filters: Any = None, *, limit: int = 100,
             offset: int = 0) -> list[MemoryItem]:
        f = _filters(filters) or {}
        params = {"limit": limit, "offset": offset, "memory_type": f.get("memory_types"),
                  "state": f.get("states"), "tag": f.get("tags"), "user": f.get("user"),
                  "agent": f.get("agent"), "session": f.get("session"),
                  "since": f.get("since"), "until": f.get("until"),
                  "valid_at": f.get("valid_at")}
        if params["state"] == []:  # [] means every state, as in MemOS.list
            params["state"] = ["active", "archived", "superseded", "invalidated", "deleted"]
        page = self._call("GET", f"/cubes/{_seg(cube)}/memories", params=params)
        return [MemoryItem.model_validate(i) for i in page["items"]]

    def search(self, query: str, cube_ids: Sequence[str] | str | None = None,
               top_k: int = 10, filters: Any = None) -> list[SearchHit]:
        if isinstance(cube_ids, str):
            cube_ids = [cube_ids]
        body = {"query": query, "cube_ids": list(cube_ids) if cube_ids else None,
                "top_k": top_k, "filters": _filters(filters)}
        data = self._call("POST", "/search", json={k: v for k, v in body.items()
                                                    if v is not None})
        return [SearchHit(item=MemoryItem.model_validate(h["item"]), score=h["score"],
                          ranks=h["ranks"], scores=h["scores"]) for h in data["hits"]]

    # --- changing --------------------------------------------------------------------
    def update(self, item_id: str, *, expected_version: int | None = None,
               **changes: Any) -> MemoryItem:
        body = dict(changes)
        if expected_version is not None:
            body["expected_version"] = expected_version
        return MemoryItem.model_validate(
            self._call("PATCH", f"/memories/{_seg(item_id)}", json=body))

    def delete(self, item_id: str) -> MemoryItem:
        return MemoryItem.model_validate(self._call("DELETE", f"/memories/{_seg(item_id)}"))

    def rollback(self, item_id: str, version: int) -> MemoryItem:
        return MemoryItem.model_validate(self._call(
            "POST", f"/memories/{_seg(item_id)}/rollback", json={"version": version}))

    def purge(self, item_ids: Sequence[str] | str) -> int:
        ids = [item_ids] if isinstance(item_ids, str) else list(item_ids)
        return sum(int(self._call("POST", f"/memories/{_seg(i)}/purge")["purged"])
                   for i in ids)

    def feedback(self, item_id: str, delta: float) -> None:
        self._call("POST", "/feedback", json={"item_id": item_id, "delta": delta})

    # --- chat ------------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Any],
        *,
        cube_ids: Sequence[str] | str | None = None,
        user: str | None = None,
        session: str | None = None,
        stream: bool = False,
        max_tokens: int = 256,
        temperature: float = 0.0,
        remember: bool = True,
    ) -> ChatResult | RemoteChatStream:
        """`MemOS.chat` on the server: a `ChatResult`, or with `stream=True` a stream."""
        if isinstance(cube_ids, str):
            cube_ids = [cube_ids]
        msgs = [m.model_dump(exclude_none=True, include={"role", "content", "name"})
                if hasattr(m, "model_dump") else m for m in messages]
        body = to_jsonable_python({
            "messages": msgs, "cube_ids": list(cube_ids) if cube_ids else None,
            "user": user, "session": session, "max_tokens": max_tokens,
            "temperature": temperature, "remember": remember, "stream": stream})
        body = {k: v for k, v in body.items() if v is not None}
        if stream:
            try:
                return RemoteChatStream(self._http, body)
            except httpx.HTTPError as exc:
                raise errors.StorageError(f"memosys server unreachable: {exc}") from None
        return _chat_result(self._call("POST", "/chat", json=body))

    def scheduler_decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        """Recent scheduling records (`MemOS.scheduler.recent_decisions`, as dicts)."""
        return list(self._call("GET", "/scheduler/decisions", params={"limit": limit})["items"])

    # --- sharing and audit -----------------------------------------------------------
    def share_cube(self, cube: str, user: str,
                   permissions: Sequence[str] | str = ("read",)) -> dict[str, Any]:
        perms = [permissions] if isinstance(permissions, str) else list(permissions)
        return dict(self._call("POST", f"/cubes/{_seg(cube)}/share",
                               json={"user": user, "permissions": perms}))

    def unshare_cube(self, cube: str, user: str) -> bool:
        return bool(self._call("DELETE", f"/cubes/{_seg(cube)}/share/{_seg(user)}")["removed"])

    def audit_log(self, *, cube: str | None = None, actor: str | None = None,
                  item_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, as dicts (`AuditEntry.as_dict()`)."""
        return list(self._call("GET", "/audit", params={
            "cube": cube, "actor": actor, "item_id": item_id, "limit": limit})["items"])

    # --- extraction rules (docs/extraction-rules.md) ---------------------------------
    def extraction_rules(self, cube: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/cubes/{_seg(cube)}/extraction"))

    def set_extraction_rules(self, cube: str, *, categories: Sequence[Any] | None = None,
                             rules: Sequence[Any] | None = None,
                             instructions: str | None = None, threshold: float | None = None,
                             expected_version: int | None = None) -> dict[str, Any]:
        body = {"categories": categories, "rules": rules, "instructions": instructions,
                "threshold": threshold, "expected_version": expected_version}
        return dict(self._call("PUT", f"/cubes/{_seg(cube)}/extraction",
                               json={k: v for k, v in body.items() if v is not None}))

    def test_extraction_rules(self, cube: str, text: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/cubes/{_seg(cube)}/extraction/test",
                               json={"text": text}))
    # --- tool and skill memory (docs/skills.md) -------------------------------------------
    def record_tool_call(self, cube: str, tool: str, arguments: dict[str, Any] | None = None,
                         result: Any = None, success: bool = True,
                         duration_ms: float | None = None, **options: Any) -> MemoryItem:
        """Options: task, trajectory_id, error, user, agent, session, visibility."""
        body = {"tool": tool, "arguments": arguments or {}, "result": result,
                "success": success, "duration_ms": duration_ms, **options}
        return MemoryItem.model_validate(
            self._call("POST", f"/cubes/{_seg(cube)}/tool-calls", json=body))

    def record_trajectory(self, cube: str, task: str, steps: Sequence[dict[str, Any]] | None
                          = None, success: bool = True, **options: Any) -> MemoryItem:
        """Options: outcome, trajectory_id, distil, user, agent, session, visibility."""
        body = {"task": task, "steps": None if steps is None else list(steps),
                "success": success, **options}
        return MemoryItem.model_validate(
            self._call("POST", f"/cubes/{_seg(cube)}/trajectories", json=body))

    def distil_skills(self, cube: str, **options: Any) -> dict[str, Any]:
        """Options: min_support, dry_run, use_model. The distil report as a dict."""
        return dict(self._call("POST", f"/cubes/{_seg(cube)}/skills/distil", json=options))

    def find_skills(self, cube: str, task: str, top_k: int = 3, *,
                    threshold: float | None = None) -> list[dict[str, Any]]:
        """`[{score, matched, skill}]`, best first; empty when no skill applies."""
        body = {"task": task, "top_k": top_k, "threshold": threshold}
        return list(self._call("POST", f"/cubes/{_seg(cube)}/skills/find",
                               json=body)["matches"])


def _seg(value: str) -> str:
    """One URL path segment (so an id or name can never change the route)."""
    if not isinstance(value, str) or not value.strip():
        raise errors.ValidationError(f"expected a non-empty string, got {value!r}")
    from urllib.parse import quote

    return quote(value, safe="")
