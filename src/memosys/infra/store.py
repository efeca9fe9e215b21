"""MemStore: publish cubes from one memosys service; list, subscribe and pull from another.

Publisher side (`MemStore`, over a runtime acting as some principal; served over HTTP by
`interface/rest_store.py` under `/api/v1/store`):
- `publish(cube, until=None)` (needs `share` on the cube) offers the cube, or with `until`
  a fixed version of it (its state at that clock), to other installations.
- `publications()` lists what is published; any authenticated caller may list.
- `subscribe(name)` makes the caller a subscriber: if it cannot read the cube yet it gets
  a read-only grant (the publisher's consent is the publication). A publisher who shared
  more with that user (write, ...) keeps it that way: read-only unless granted more.
- `archive(name, since)` writes a MIP archive of the versions after clock `since`, exported
  as the caller (ACLs, private memories and redaction apply as for any export).
- `unpublish(name)` stops all further pulls and withdraws the grants subscribing made.
The publication lives in the cube's policy record (key `memstore_publication`), so it is
stored by whichever backend holds the cube and seen by every worker at once.

Subscriber side (`StoreClient` for the HTTP calls, `subscribe`/`pull` over a local
runtime): the first pull imports the whole archive as a new local cube (stable new ids,
see exchange_import.remapped_id); each later pull asks only for versions after the last
clock it saw, merges exactly those, and drops memories purged at the source. The
subscription (URL, publication, last remote clock) lives in the local cube's policy record
(key `memstore_subscription`); the API key, if saved, in `<home>/store-keys.json` (0600).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memosys.errors import (
    ConflictError,
    MemosysError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    ValidationError,
)
from memosys.infra.exchange_archive import ArchiveLimits
from memosys.infra.exchange_export import ExportReport, export_cube
from memosys.infra.exchange_import import ImportReport, import_archive, read_archive
from memosys.infra.governance import Grant
from memosys.types import MemCube, utcnow

if TYPE_CHECKING:
    from memosys.system import MemOS

PUBLICATION_KEY = "memstore_publication"
SUBSCRIPTION_KEY = "memstore_subscription"
KEY_ENV = "MEMOSYS_STORE_API_KEY"


@dataclass(frozen=True)
class Publication:
    name: str
    cube_id: str
    until: int | None
    """A fixed version (the cube as of this clock); None follows the cube."""
    description: str
    published_at: str
    published_by: str
    clock: int = 0
    """What a pull gets up to now: `until`, or the cube's current clock."""
    embedder: str = ""
    granted: list[str] = field(default_factory=list)
    """Users whose read access came from subscribing (withdrawn on unpublish)."""
    subscribers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MemStore:
    """The publisher's side, as the runtime's actor."""

    def __init__(self, mos: MemOS) -> None:
        self.mos = mos

    def _record(self, cube: MemCube) -> dict[str, Any] | None:
        found = self.mos.vault.governance.get_policy(cube.id).get(PUBLICATION_KEY)
        return found if isinstance(found, dict) else None

    def _save(self, cube: MemCube, record: dict[str, Any] | None) -> None:
        store = self.mos.vault.governance
        policy = dict(store.get_policy(cube.id))
        if record is None:
            policy.pop(PUBLICATION_KEY, None)
        else:
            policy[PUBLICATION_KEY] = record
        store.set_policy(cube.id, policy)

    def _publication(self, cube: MemCube, record: dict[str, Any]) -> Publication:
        until = record.get("until")
        return Publication(
            name=cube.name, cube_id=cube.id, until=until,
            description=record.get("description", ""),
            published_at=record["published_at"], published_by=record["published_by"],
            clock=cube.clock if until is None else min(until, cube.clock),
            embedder=cube.config.embedder_id, granted=list(record.get("granted", [])),
            subscribers=list(record.get("subscribers", [])))

    def _published(self, name: str) -> tuple[MemCube, dict[str, Any]]:
        """The cube of an active publication; NotFoundError otherwise (also for a cube
        that exists but is not published: nothing about it is revealed)."""
        try:
            cube = self.mos.vault.get_cube(name)
        except NotFoundError:
            raise NotFoundError(f"no publication {name!r}") from None
        record = self._record(cube)
        if record is None:
            raise NotFoundError(f"no publication {name!r}")
        return cube, record

    def publish(self, cube: str, *, until: int | None = None,
                description: str = "") -> Publication:
        found = self.mos.vault.get_cube(cube)
        self.mos._access.require_cube(found, "share", op="store.publish", name=cube)
        if until is not None and not 0 <= until <= found.clock:
            raise ValidationError(f"until must be between 0 and the cube's clock "
                                  f"{found.clock}, got {until}")
        old = self._record(found) or {}
        record = {"until": until, "description": description,
                  "published_at": utcnow().isoformat(), "published_by": self.mos.actor.user_id,
                  "granted": old.get("granted", []), "subscribers": old.get("subscribers", [])}
        self._save(found, record)
        self.mos.record_audit("store.publish", cube_id=found.id, detail={"until": until})
        return self._publication(found, record)

    def unpublish(self, name: str) -> Publication:
        cube, record = self._published(name)
        self.mos._access.require_cube(cube, "share", op="store.unpublish", name=name)
        for user in record.get("granted", []):
            self.mos.vault.governance.revoke_grant(cube.id, user)
        self._save(cube, None)
        self.mos.record_audit("store.unpublish", cube_id=cube.id,
                              detail={"withdrawn": record.get("granted", [])})
        return self._publication(cube, record)

    def publications(self) -> list[Publication]:
        self.mos._access.check_live()
        out = []
        for cube in self.mos.vault.list_cubes():
            record = self._record(cube)
            if record is not None:
                out.append(self._publication(cube, record))
        return out

    def publication(self, name: str) -> Publication:
        self.mos._access.check_live()
        return self._publication(*self._published(name))

    def subscribe(self, name: str) -> Publication:
        """Register the caller as a subscriber, with read access if it had none."""
        cube, record = self._published(name)
        access = self.mos._access
        access.check_live()
        user = self.mos.actor.user_id
        if not access.unrestricted and "read" not in access.permissions(cube):
            self.mos.vault.governance.grant(
                Grant(cube.id, user, frozenset({"read"}), record["published_by"], utcnow()))
            record["granted"] = sorted({*record.get("granted", []), user})
        record["subscribers"] = sorted({*record.get("subscribers", []), user})
        self._save(cube, record)
        self.mos.record_audit("store.subscribe", cube_id=cube.id, detail={"user": user})
        return self._publication(cube, record)

    def archive(self, name: str, path: str | Path, *, since: int = 0) -> ExportReport:
        """The publication's versions after `since` as a MIP archive, exported as the
        caller (who needs read access: subscribing gives it)."""
        cube, record = self._published(name)
        pub = self._publication(cube, record)
        if since < 0 or since > cube.clock:
            raise ValidationError(f"since must be between 0 and {cube.clock}, got {since}")
        return export_cube(self.mos, cube.id, path, since=min(since, pub.clock),
                           until=pub.clock)


# --- subscriber side -----------------------------------------------------------------------
@dataclass(frozen=True)
class Subscription:
    cube: str
    cube_id: str
    url: str
    publication: str
    remote_clock: int
    subscribed_at: str
    last_pull_at: str | None = None


class StoreClient:
    """HTTP calls to another memosys service's `/api/v1/store`."""

    def __init__(self, url: str, api_key: str | None, *, timeout: float = 120.0,
                 max_archive_bytes: int = ArchiveLimits().max_archive_bytes) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.max_archive_bytes = max_archive_bytes
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            resp = self._http.request(method, f"/api/v1/store{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot reach the store at {self.url}: {exc}") from None
        if resp.status_code >= 400:
            raise _remote_error(resp.status_code, resp.content)
        return resp.json()

    def publications(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/publications")["items"])

    def publication(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/publications/{name}"))

    def subscribe(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/publications/{name}/subscribe"))

    def download(self, name: str, since: int, dest: Path) -> Path:
        """Stream the archive to `dest`, refusing more than `max_archive_bytes`."""
        import httpx

        try:
            with self._http.stream("GET", f"/api/v1/store/publications/{name}/archive",
                                   params={"since": since}) as resp:
                if resp.status_code >= 400:
                    raise _remote_error(resp.status_code, resp.read())
                size = 0
                with dest.open("wb") as fh:
                    for chunk in resp.iter_bytes():
                        size += len(chunk)
                        if size > self.max_archive_bytes:
                            raise ValidationError(
                                f"the archive from {self.url} exceeds "
                                f"{self.max_archive_bytes} bytes")
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            raise StorageError(f"downloading from {self.url} failed: {exc}") from None
        return dest


def _remote_error(status: int, body: bytes) -> MemosysError:
    from memosys.errors import AuthenticationError

    try:
        err = json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "error", body[:200].decode(errors="replace")
    kinds: dict[int, type[MemosysError]] = {
        400: ValidationError, 401: AuthenticationError, 403: PermissionDeniedError,
        404: NotFoundError, 409: ConflictError, 422: ValidationError}
    return kinds.get(status, StorageError)(f"store: {message} ({code}, HTTP {status})")


def subscribe(mos: MemOS, url: str, name: str, api_key: str | None, *,
              as_name: str | None = None, save_key: bool = True) -> ImportReport:
    """Subscribe to publication `name` at `url` and pull it whole into a new local cube."""
    with StoreClient(url, api_key) as client:
        client.subscribe(name)
        report = _fetch_and_import(mos, client, name, since=0, cube=as_name or name,
                                   on_conflict=None)
    cube = mos.vault.get_cube(report.cube_id)
    state = Subscription(cube=cube.name, cube_id=cube.id, url=url.rstrip("/"),
                         publication=name, remote_clock=report.source_clock,
                         subscribed_at=utcnow().isoformat(),
                         last_pull_at=utcnow().isoformat())
    _save_subscription(mos, cube, state)
    if save_key and api_key:
        _save_key(mos, cube.id, api_key)
    return report


def pull(mos: MemOS, cube: str, *, api_key: str | None = None) -> ImportReport:
    """Fetch and merge the versions published after the last pull (and drop memories
    purged at the source)."""
    found = mos.get_cube(cube, need="write")
    state = subscription(mos, found.name)
    key = api_key or os.environ.get(KEY_ENV) or _load_key(mos, found.id)
    with StoreClient(state.url, key) as client:
        for attempt in range(2):
            try:
                report = _fetch_and_import(mos, client, state.publication,
                                           since=state.remote_clock, cube=found.name,
                                           on_conflict="merge", prune=True)
                break
            except ConflictError:
                if attempt:  # a concurrent pull moved the cube: plan once more
                    raise
    fresh = mos.vault.get_cube(found.id)
    _save_subscription(mos, fresh, Subscription(
        **{**asdict(state), "remote_clock": report.source_clock,
           "last_pull_at": utcnow().isoformat()}))
    return report


def _fetch_and_import(mos: MemOS, client: StoreClient, name: str, *, since: int, cube: str,
                      on_conflict: str | None, prune: bool = False) -> ImportReport:
    with tempfile.TemporaryDirectory(prefix="memosys-pull-") as tmp:
        path = client.download(name, since, Path(tmp) / "pull.mip")
        parsed = read_archive(path, limits=ArchiveLimits(
            max_archive_bytes=client.max_archive_bytes))
    return import_archive(mos, parsed, name=cube, on_conflict=on_conflict,  # type: ignore[arg-type]
                          prune=prune)


def subscription(mos: MemOS, cube: str) -> Subscription:
    found = mos.get_cube(cube)
    raw = mos.vault.governance.get_policy(found.id).get(SUBSCRIPTION_KEY)
    if not isinstance(raw, dict):
        raise NotFoundError(f"cube {found.name!r} is not a subscription")
    return Subscription(**{**raw, "cube": found.name, "cube_id": found.id})


def subscriptions(mos: MemOS) -> list[Subscription]:
    out = []
    for cube in mos.list_cubes():
        raw = mos.vault.governance.get_policy(cube.id).get(SUBSCRIPTION_KEY)
        if isinstance(raw, dict):
            out.append(Subscription(**{**raw, "cube": cube.name, "cube_id": cube.id}))
    return out


def _save_subscription(mos: MemOS, cube: MemCube, state: Subscription) -> None:
    store = mos.vault.governance
    record = {k: v for k, v in asdict(state).items() if k not in ("cube", "cube_id")}
    store.set_policy(cube.id, {**store.get_policy(cube.id), SUBSCRIPTION_KEY: record})


def _keys_file(mos: MemOS) -> Path:
    return mos.settings.home / "store-keys.json"


def _save_key(mos: MemOS, cube_id: str, key: str) -> None:
    path = _keys_file(mos)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = _read_keys(path)
    keys[cube_id] = key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh)


def _load_key(mos: MemOS, cube_id: str) -> str | None:
    return _read_keys(_keys_file(mos)).get(cube_id)


def _read_keys(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
