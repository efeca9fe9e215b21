"""`/api/v1` routes for change events (memosys.system_events; docs/events.md):

- `GET /api/v1/events?since=&limit=&cube=&kinds=`: a page of the event log;
- `GET /api/v1/events/stream?since=&cube=&kinds=&heartbeat=`: server-sent events, `id:` is
  the sequence number, so a reconnecting client's `Last-Event-ID` resumes; `: keepalive`
  comments while nothing happens. (Left out of the OpenAPI schema: it never ends.)
- `/api/v1/webhooks...`: register, list, remove, pause; deliveries and the attempt log;
  retry a dead-lettered delivery.

The caller sees events only from cubes it may read (the runtime decides, as everywhere).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from memosys.errors import MemosysError, ValidationError
from memosys.infra.events import KNOWN_KINDS, Event
from memosys.infra.vault.events_sql import Attempt, Delivery, Webhook
from memosys.interface.rest_auth import request_runtime
from memosys.interface.rest_errors import ERROR_RESPONSES
from memosys.system import MemOS
from memosys.system_events import MAX_PAGE, EventPage

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)

Runtime = Annotated[MemOS, Depends(request_runtime)]
Kind = Literal["created", "updated", "deleted", "purged", "state_changed", "rolled_back",
               "consolidated"]  # memosys.infra.events.KNOWN_KINDS
assert set(get_args(Kind)) == set(KNOWN_KINDS)

SSE_POLL = 0.5
"""Seconds between looks at the outbox while a stream is idle."""


class EventOut(BaseModel):
    id: str
    seq: int
    kind: str
    cube_id: str
    memory_id: str | None
    version: int | None
    op: str
    actor: str
    at: datetime
    data: dict[str, Any]

    @classmethod
    def of(cls, event: Event) -> EventOut:
        return cls.model_validate(event.to_json())


class EventPageOut(BaseModel):
    events: list[EventOut]
    next: int = Field(description="Pass as `since` for the next page.")


def _kinds(kinds: str | None) -> list[str]:
    wanted = [k.strip() for k in (kinds or "").split(",") if k.strip()]
    if len(wanted) > 32:
        raise ValidationError("at most 32 kinds")
    return wanted


CubeQ = Annotated[str | None, Query(max_length=128, description="Only this cube.")]
KindsQ = Annotated[str | None, Query(max_length=1024,
                                     description="Comma-separated event kinds.")]


@router.get("/events", response_model=EventPageOut, tags=["events"])
def list_events(mos: Runtime, since: Annotated[int, Query(ge=0, le=2**62)] = 0,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                cube: CubeQ = None, kinds: KindsQ = None) -> EventPageOut:
    """Events after sequence `since`, oldest first, from cubes the caller may read."""
    page = mos.events.list(since=since, limit=limit, cube=cube, kinds=_kinds(kinds))
    return EventPageOut(events=[EventOut.of(e) for e in page.events], next=page.next)


def _frame(event: Event) -> str:
    data = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n"


@router.get("/events/stream", tags=["events"], include_in_schema=False)
async def stream_events(
    request: Request, mos: Runtime,
    since: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    cube: CubeQ = None, kinds: KindsQ = None,
    heartbeat: Annotated[float, Query(ge=0.2, le=300)] = 15.0,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """`text/event-stream` of events after `since` (or the `Last-Event-ID` header; neither:
    from now), each `id: <seq>`, `event: <kind>`, `data: <event JSON>`."""
    if since is None and last_event_id:
        try:
            since = int(last_event_id)
        except ValueError:
            raise ValidationError("Last-Event-ID must be an event sequence number") from None
    wanted = _kinds(kinds)
    # checked now, so an unreadable cube is a 404 rather than a stream that ends at once
    first = await anyio.to_thread.run_sync(
        lambda: mos.events.list(since=since if since is not None else mos.events.last_seq(),
                                limit=MAX_PAGE, cube=cube, kinds=wanted))

    def read(cursor: int) -> EventPage:
        return mos.events.list(since=cursor, limit=MAX_PAGE, cube=cube, kinds=wanted)

    async def frames() -> AsyncIterator[str]:
        page = first
        yield "retry: 2000\n\n"
        quiet = 0.0
        while True:
            for event in page.events:
                yield _frame(event)
            if page.events:
                quiet = 0.0
            else:
                if await request.is_disconnected():
                    return
                await anyio.sleep(SSE_POLL)
                quiet += SSE_POLL
                if quiet >= heartbeat:
                    quiet = 0.0
                    yield ": keepalive\n\n"
            try:
                page = await anyio.to_thread.run_sync(read, page.next)
            except MemosysError as exc:  # e.g. the key was revoked mid-stream
                body = json.dumps({"code": exc.code, "message": str(exc)})
                yield f"event: error\ndata: {body}\n\n"
                return

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- webhooks --------------------------------------------------------------------------
class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=2048)
    secret: str | None = Field(default=None, min_length=16, max_length=256,
                               description="Generated when left out (returned only now).")
    kinds: list[Kind] = Field(default_factory=list, max_length=16,
                              description="Only these kinds; empty: all.")
    cubes: list[str] = Field(default_factory=list, max_length=64,
                             description="Only these cubes (names or ids); empty: every "
                             "cube you may read.")
    description: str = Field(default="", max_length=200)
    from_start: bool = Field(default=False,
                             description="Also deliver events stored before now.")


class WebhookOut(BaseModel):
    id: str
    owner: str
    url: str
    kinds: list[str]
    cube_ids: list[str]
    created_at: datetime
    active: bool
    cursor: int
    description: str
    secret: str | None = Field(default=None, description="Only in the registration reply.")

    @classmethod
    def of(cls, hook: Webhook, *, with_secret: bool = False) -> WebhookOut:
        return cls.model_validate({**hook.to_json(),
                                   "secret": hook.secret if with_secret else None})


class Webhooks(BaseModel):
    items: list[WebhookOut]


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: bool


class DeliveryOut(BaseModel):
    id: str
    webhook_id: str
    event_seq: int
    event_id: str
    state: str
    attempts: int
    next_at: datetime
    last_status: int | None
    last_error: str | None
    updated_at: datetime

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls.model_validate(d.to_json())


class Deliveries(BaseModel):
    items: list[DeliveryOut]


class AttemptOut(BaseModel):
    delivery_id: str
    webhook_id: str
    event_seq: int
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls.model_validate(a.to_json())


class Attempts(BaseModel):
    items: list[AttemptOut]


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=1, ge=1, le=100)


class Removed(BaseModel):
    removed: bool


@router.post("/webhooks", response_model=WebhookOut, status_code=status.HTTP_201_CREATED,
             tags=["events"])
def add_webhook(body: WebhookIn, mos: Runtime) -> WebhookOut:
    """Register a receiver: signed POSTs of your events (see docs/events.md)."""
    hook = mos.events.add_webhook(body.url, secret=body.secret, kinds=list(body.kinds),
                                  cubes=body.cubes, description=body.description,
                                  from_start=body.from_start)
    return WebhookOut.of(hook, with_secret=True)


@router.get("/webhooks", response_model=Webhooks, tags=["events"])
def list_webhooks(mos: Runtime) -> Webhooks:
    """Your webhooks (an admin sees all); secrets are never shown again."""
    return Webhooks(items=[WebhookOut.of(h) for h in mos.events.webhooks()])


@router.get("/webhooks/{hook_id}", response_model=WebhookOut, tags=["events"])
def get_webhook(hook_id: str, mos: Runtime) -> WebhookOut:
    return WebhookOut.of(mos.events.webhook(hook_id))


@router.patch("/webhooks/{hook_id}", response_model=WebhookOut, tags=["events"])
def patch_webhook(hook_id: str, body: WebhookPatch, mos: Runtime) -> WebhookOut:
    """Pause (`active: false`) or resume a webhook; events keep queueing while paused."""
    return WebhookOut.of(mos.events.set_webhook_active(hook_id, body.active))


@router.delete("/webhooks/{hook_id}", response_model=Removed, tags=["events"])
def remove_webhook(hook_id: str, mos: Runtime) -> Removed:
    mos.events.remove_webhook(hook_id)
    return Removed(removed=True)


@router.get("/webhooks/{hook_id}/deliveries", response_model=Deliveries, tags=["events"])
def list_deliveries(hook_id: str, mos: Runtime,
                    state: Annotated[Literal["pending", "delivered", "dead"] | None,
                                     Query()] = None,
                    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Deliveries:
    return Deliveries(items=[DeliveryOut.of(d) for d in
                             mos.events.deliveries(hook_id, state=state, limit=limit)])


@router.get("/webhooks/{hook_id}/attempts", response_model=Attempts, tags=["events"])
def list_attempts(hook_id: str, mos: Runtime,
                  delivery: Annotated[str | None, Query(max_length=64)] = None,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Attempts:
    """The delivery log: attempt number, status code, error and duration, newest first."""
    return Attempts(items=[AttemptOut.of(a) for a in
                           mos.events.attempts(hook_id, delivery_id=delivery, limit=limit)])


@router.post("/webhooks/{hook_id}/deliveries/{delivery_id}/retry",
             response_model=DeliveryOut, tags=["events"])
def retry_delivery(hook_id: str, delivery_id: str, body: RetryIn, mos: Runtime) -> DeliveryOut:
    """Send a dead-lettered delivery again."""
    return DeliveryOut.of(mos.events.retry_delivery(hook_id, delivery_id, body.attempts))
