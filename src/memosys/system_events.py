"""Change events in the Memory API (`mos.events`): read and follow the event log, publish
component events (consolidation), manage webhooks and read their delivery log, and run
the delivery dispatcher. Permission checks are the runtime's (memosys.access): a caller
sees events only from cubes it may read, and a private memory's events only if it owns
the memory (or is an admin). docs/events.md."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from memosys.access import Access
from memosys.errors import NotFoundError, PermissionDeniedError, ValidationError
from memosys.infra.events import KNOWN_KINDS, Event, published_event
from memosys.infra.governance import LOCAL_ADMIN, Principal
from memosys.infra.vault.events_sql import (
    DELIVERY_STATES,
    Attempt,
    Delivery,
    SQLEventStore,
    Webhook,
)
from memosys.types import MemCube, new_id, utcnow

if TYPE_CHECKING:
    from memosys.infra.events_delivery import DeliveryPolicy, Dispatcher
    from memosys.system import MemOS

MAX_PAGE = 1000
MAX_WEBHOOKS_PER_USER = 50


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    next: int
    """Pass as `since` for the next page (the last sequence looked at, even if hidden)."""


class EventsAPI:
    def __init__(self, mos: MemOS) -> None:
        self.mos = mos

    @property
    def store(self) -> SQLEventStore:
        return self.mos.vault.events

    @property
    def _access(self) -> Access:
        return self.mos._access

    # --- reading -------------------------------------------------------------------------
    def _cubes(self, cube: str | Sequence[str] | None) -> list[MemCube]:
        names = [cube] if isinstance(cube, str) else list(cube or [])
        if names:
            found = [self.mos.vault.get_cube(n) for n in names]
            for c, n in zip(found, names, strict=True):
                self._access.require_cube(c, "read", op="events", name=n)
            return found
        readable, _ = self._access.split_cubes(self.mos.vault.list_cubes())
        return readable

    def _kinds(self, kinds: str | Sequence[str] | None) -> list[str]:
        if kinds is None:
            return []
        values = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds)]
        return [k for k in values if k]

    def list(self, *, since: int = 0, limit: int = 100, cube: str | Sequence[str] | None = None,
             kinds: str | Sequence[str] | None = None) -> EventPage:
        """Events after sequence `since`, oldest first, that the caller may see."""
        if not isinstance(since, int) or since < 0:
            raise ValidationError("since must be a sequence number >= 0")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit must be within 1..{MAX_PAGE}")
        cubes = None if self._access.unrestricted and not cube else \
            [c.id for c in self._cubes(cube)]
        rows = self.store.events_after(since, limit, cube_ids=cubes, kinds=self._kinds(kinds))
        user = self.mos.actor.user_id
        visible = [e for e in rows if self._access.unrestricted or e.private_owner in (None, user)]
        return EventPage(visible, rows[-1].seq if rows else since)

    def last_seq(self) -> int:
        return self.store.last_seq()

    def follow(self, *, since: int | None = None, cube: str | Sequence[str] | None = None,
               kinds: str | Sequence[str] | None = None, poll: float = 0.5,
               heartbeat: float = 15.0, stop: threading.Event | None = None,
               ) -> Iterator[Event | None]:
        """Events as they come (None every `heartbeat` seconds without one), starting
        after `since` (None: from now). Ends when `stop` is set."""
        cursor = self.last_seq() if since is None else since
        quiet_since = time.monotonic()
        stop = stop or threading.Event()
        while not stop.is_set():
            page = self.list(since=cursor, limit=MAX_PAGE, cube=cube, kinds=kinds)
            cursor = page.next
            yield from page.events
            if page.events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= heartbeat:
                quiet_since = time.monotonic()
                yield None
            if len(page.events) < MAX_PAGE:
                stop.wait(poll)

    # --- publishing ----------------------------------------------------------------------
    def publish(self, kind: str, cube_id: str, memory_ids: Sequence[str] = (),
                data: dict[str, Any] | None = None) -> None:
        """Record an event a component raises itself, e.g. `consolidated` after a
        consolidation run (its memory writes have their own events already). Needs write
        access to the cube. `data` is small JSON (ids, counts, a run id), not full text."""
        found = self.mos.vault.get_cube(cube_id)
        self._access.require_cube(found, "write", op="events.publish", name=cube_id)
        self.store.publish([published_event(kind, found.id, memory_ids, dict(data or {}))])

    # --- webhooks ------------------------------------------------------------------------
    def add_webhook(self, url: str, *, secret: str | None = None,
                    kinds: str | Sequence[str] | None = None,
                    cubes: str | Sequence[str] | None = None, description: str = "",
                    from_start: bool = False) -> Webhook:
        """Register a receiver for the caller's events. Deliveries are POSTs signed with
        `secret` (generated when not given; keep it: it is returned only here). `cubes`:
        only these (each must be readable now); none: every cube the caller may read at
        delivery time. `from_start`: also deliver events stored before now."""
        actor = self.mos.actor
        self._access.check_live()
        if not actor.allows("read"):
            raise PermissionDeniedError(f"{actor.user_id} may not read events")
        parts = urlsplit(url if isinstance(url, str) else "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"webhook url must be http(s)://host/...: {url!r}")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
            raise ValidationError("a webhook secret needs at least 16 characters")
        wanted = self._kinds(kinds)
        unknown = [k for k in wanted if k not in KNOWN_KINDS]
        if unknown:
            raise ValidationError(f"unknown event kinds {unknown}; known: {list(KNOWN_KINDS)}")
        cube_ids = [c.id for c in self._cubes(cubes)] if cubes else []
        if len(self.store.list_webhooks(actor.user_id)) >= MAX_WEBHOOKS_PER_USER:
            raise ValidationError(f"at most {MAX_WEBHOOKS_PER_USER} webhooks per user")
        hook = Webhook(
            id=new_id(), owner=actor.user_id, url=url, kinds=tuple(wanted),
            cube_ids=tuple(cube_ids), created_at=utcnow(), active=True,
            cursor=0 if from_start else self.store.last_seq(), scopes=tuple(sorted(
                actor.scopes)), description=str(description or "")[:200],
            secret=secret or "whsec_" + secrets.token_urlsafe(32))
        self.store.add_webhook(hook)
        self.mos._audit("webhook.add", detail={"webhook": hook.id, "url": url,
                                               "cubes": cube_ids, "kinds": wanted})
        return hook

    def webhooks(self) -> list[Webhook]:
        """The caller's webhooks (an admin's: everyone's). Secrets are left out."""
        owner = None if self._access.unrestricted else self.mos.actor.user_id
        return [_public(h) for h in self.store.list_webhooks(owner)]

    def webhook(self, hook_id: str) -> Webhook:
        return _public(self._own(hook_id))

    def _own(self, hook_id: str) -> Webhook:
        if not isinstance(hook_id, str) or not hook_id:
            raise ValidationError("a webhook id is needed")
        hook = self.store.get_webhook(hook_id)
        if not self._access.unrestricted:
            self._access.check_live()
            if hook.owner != self.mos.actor.user_id:
                raise NotFoundError(f"no webhook {hook_id!r}")
        return hook

    def remove_webhook(self, hook_id: str) -> None:
        hook = self._own(hook_id)
        self.store.delete_webhook(hook.id)
        self.mos._audit("webhook.remove", detail={"webhook": hook.id})

    def set_webhook_active(self, hook_id: str, active: bool) -> Webhook:
        return _public(self.store.set_webhook_active(self._own(hook_id).id, bool(active)))

    def deliveries(self, hook_id: str, *, state: str | None = None,
                   limit: int = 100) -> list[Delivery]:
        """The webhook's deliveries, newest event first (state: pending, delivered, dead)."""
        if state is not None and state not in DELIVERY_STATES:
            raise ValidationError(f"state must be one of {list(DELIVERY_STATES)}")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit must be within 1..{MAX_PAGE}")
        return self.store.deliveries(self._own(hook_id).id, state=state, limit=limit)

    def attempts(self, hook_id: str, *, delivery_id: str | None = None,
                 limit: int = 100) -> list[Attempt]:
        """The delivery log: each attempt's status code, error and duration, newest first."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit must be within 1..{MAX_PAGE}")
        return self.store.attempts(self._own(hook_id).id, delivery_id=delivery_id,
                                   limit=limit)

    def retry_delivery(self, hook_id: str, delivery_id: str, attempts: int = 1) -> Delivery:
        """Send a dead-lettered delivery again, with `attempts` more tries."""
        hook = self._own(hook_id)
        found = self.store.get_delivery(delivery_id)
        if found.webhook_id != hook.id:
            raise NotFoundError(f"no delivery {delivery_id!r}")
        if found.state != "dead":
            raise ValidationError(f"delivery {delivery_id} is {found.state}, not dead")
        if not isinstance(attempts, int) or not 1 <= attempts <= 100:
            raise ValidationError("attempts must be within 1..100")
        return self.store.retry(delivery_id, attempts)

    # --- the dispatcher ------------------------------------------------------------------
    def start_dispatcher(self, policy: DeliveryPolicy | None = None) -> Dispatcher:
        """Start this process's delivery thread (one per vault; a second call returns the
        running one). Any number of processes may run one on a shared database."""
        from memosys.infra.events_delivery import Dispatcher

        vault = self.mos.vault
        with _DISPATCH_LOCK:
            found: Dispatcher | None = vault.__dict__.get("_event_dispatcher")
            if found is None or not found.running:
                found = Dispatcher(self.store, lambda hook: acceptor(self.mos, hook), policy)
                found.start()
                vault.__dict__["_event_dispatcher"] = found
            return found

    def stop_dispatcher(self) -> None:
        found = self.mos.vault.__dict__.pop("_event_dispatcher", None)
        if found is not None:
            found.stop()


_DISPATCH_LOCK = threading.Lock()


def _public(hook: Webhook) -> Webhook:
    from dataclasses import replace

    return replace(hook, secret="")


def _principal(mos: MemOS, hook: Webhook) -> Principal | None:
    """Who a webhook's deliveries act as: its owner now (role re-read), never with more
    scopes than the key that registered it. None: the owner is gone."""
    if hook.owner == LOCAL_ADMIN.user_id:
        return LOCAL_ADMIN
    try:
        user = mos.vault.governance.get_user(hook.owner)
    except NotFoundError:
        return None
    return Principal(user_id=user.id, role=user.role, scopes=frozenset(hook.scopes))


def acceptor(mos: MemOS, hook: Webhook) -> Callable[[Event], bool]:
    """Which events a webhook gets, decided at fan-out with the owner's rights then."""
    principal = _principal(mos, hook)
    if principal is None or not principal.allows("read"):
        return lambda _e: False
    access = Access(mos, principal)
    readable = {c.id for c in access.split_cubes(mos.vault.list_cubes())[0]}
    wanted = set(hook.cube_ids) & readable if hook.cube_ids else readable
    kinds = set(hook.kinds)

    def accept(event: Event) -> bool:
        if event.cube_id not in wanted or (kinds and event.kind not in kinds):
            return False
        owner = event.private_owner
        return owner is None or access.unrestricted or owner == principal.user_id

    return accept
