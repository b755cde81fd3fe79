"""One registry of every store that holds per-user data: forget, export and import go through it.

A store that keeps anything about a user (memory's items and summaries, RPM's history and what is derived from
it, VAS profiles, stored responses, and whatever a later feature adds) registers one `UserDataPart` beside its
own wiring. `DELETE /admin/users/{user}` runs every part's forget, the export is one document with a section per
part, an import hands each part its section, and the isolation tests iterate the registry, so a part added later
is forgotten, exported and checked without anyone editing a central list.

`TablesPart` is the part for a store whose data is rows of SQL tables with `tenant` and `user` columns (RPM,
VAS, stored responses): it exports the user's rows, and imports a section in one transaction, so a section
that cannot be written leaves nothing half-written. The forget log (forget_log.py) records each forget so that
a restore from a backup taken before it can replay it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database, DatabaseUnavailable

log = logging.getLogger("rapport.userdata")

# The export document: one section per part. Version 1 was memory's own document (`rapport.memory.v1`, items and
# summaries at the top level), still accepted by `UserDataRegistry.import_` as memory's section.
FORMAT = "rapport.user.v2"
VERSION = 2
MEMORY_V1_FORMAT = "rapport.memory.v1"

Counts = dict[str, int]
# Errors that say the database cannot be reached (mapped to 503 at the HTTP boundary), never a part's failure.
UNAVAILABLE = (DatabaseUnavailable, sa.exc.OperationalError, sa.exc.TimeoutError)
UserKey = tuple[str, str]


def user_digest(tenant: str, user: str) -> str:
    """The digest that stands for a user in rows meant to outlive their forget (the forget log, and memory's
    forget generations, which use the same one)."""
    return hashlib.sha256(f"{tenant}\x00{user}".encode()).hexdigest()


@runtime_checkable
class UserDataPart(Protocol):
    """What one store registers. Every call is scoped to (tenant, user) and never touches another user's rows."""

    name: str

    async def forget(self, tenant: str, user: str) -> Counts:
        """Remove everything the store holds of the user; what was removed, by kind."""
        ...

    async def export(self, tenant: str, user: str) -> Any:
        """The user's data as a JSON-able value (empty when the store holds nothing of them)."""
        ...

    async def import_(self, tenant: str, user: str, data: Any) -> Counts:
        """Write an exported section into (tenant, user), whichever user it was exported from."""
        ...

    async def owners(self, tenant: str) -> set[str]:
        """The users of `tenant` the store holds data of (a forget replay matches them against the log)."""
        ...


class ImportFailed(Exception):
    """A section a part could not import (bad shape, or the store refused it); nothing of it was written where
    the store has a transaction to write it in."""


def is_empty(section: Any) -> bool:
    """A section that carries no data: None, an empty container, or a mapping whose values are all empty."""
    if section is None:
        return True
    if isinstance(section, Mapping):
        return all(is_empty(value) for value in section.values())
    if isinstance(section, list | tuple | set | str):
        return len(section) == 0
    return False


class UserDataRegistry:
    def __init__(self) -> None:
        self._parts: dict[str, UserDataPart] = {}

    def register(self, part: UserDataPart) -> None:
        if part.name in self._parts and self._parts[part.name] is not part:
            raise ValueError(f"a user-data part named {part.name!r} is already registered")
        self._parts[part.name] = part

    def parts(self) -> list[UserDataPart]:
        return list(self._parts.values())

    def get(self, name: str) -> UserDataPart | None:
        return self._parts.get(name)

    async def forget(self, tenant: str, user: str) -> dict[str, Counts]:
        """Every part's forget, in the order they registered; what each removed (the job queue's `forget_user`
        logs the forget and deletes the user's jobs first)."""
        return {part.name: await part.forget(tenant, user) for part in self.parts()}

    async def export(self, tenant: str, user: str) -> dict[str, Any]:
        sections = {part.name: await part.export(tenant, user) for part in self.parts()}
        return {
            "format": FORMAT,
            "version": VERSION,
            "tenant": tenant,
            "user": user,
            "exported_at": time.time(),
            "parts": sections,
        }

    async def import_(self, tenant: str, user: str, document: Mapping[str, Any]) -> tuple[dict[str, Counts], dict[str, str]]:
        """Each section to its part: (what each imported, why each failed). A failed part does not stop the
        others; a section no part is registered for is reported as failed, never dropped silently."""
        sections = sections_of(document)
        imported: dict[str, Counts] = {}
        errors: dict[str, str] = {}
        for name, section in sections.items():
            part = self._parts.get(name)
            if part is None:
                errors[name] = f"no part named {name!r} on this server (known: {sorted(self._parts)})"
                continue
            if section is None:
                continue
            try:
                imported[name] = await part.import_(tenant, user, section)
            except ImportFailed as exc:
                errors[name] = str(exc)
            except UNAVAILABLE:
                # The database is down, not the document wrong: the caller answers 503 and the client retries
                # the whole document (an import writes nothing twice, so parts already done are not doubled).
                raise
            except Exception as exc:
                # Reported to the admin, logged here with its traceback: the other parts still import.
                log.exception("importing the %s section of %s/%s failed", name, tenant, "<user>")
                errors[name] = f"{exc.__class__.__name__}: {str(exc)[:300]}"
        return imported, errors


def sections_of(document: Mapping[str, Any]) -> dict[str, Any]:
    """The sections of an export document, by part; today's memory-only document is memory's section."""
    fmt = document.get("format")
    if fmt == MEMORY_V1_FORMAT or (fmt is None and "parts" not in document):
        return {"memory": {"items": document.get("items") or [], "summaries": document.get("summaries") or []}}
    if fmt not in (None, FORMAT):
        raise ImportFailed(f"unknown export format {fmt!r} (this server reads {FORMAT!r} and {MEMORY_V1_FORMAT!r})")
    parts = document.get("parts")
    if not isinstance(parts, Mapping):
        raise ImportFailed("'parts' must be an object with one section per part")
    return dict(parts)


# -- parts made of SQL rows ------------------------------------------------------------------------------


def _is_own_id(table: sa.Table, column: sa.Column[Any]) -> bool:
    """An integer `id` key the database assigns: a row imported into another user, or beside rows already
    there, gets a new one (the exported value could belong to another row of this database)."""
    keys = list(table.primary_key.columns)
    return len(keys) == 1 and keys[0] is column and column.name == "id" and isinstance(column.type, sa.Integer)


def _referenced(column: sa.Column[Any], keys: set[str]) -> str | None:
    """The table of the part a column such as `entry_id` or `factor_id` points into, by the naming the stores
    use (`<singular>_id` into `<plural>`); None for any other column."""
    if not column.name.endswith("_id") or not isinstance(column.type, sa.Integer):
        return None
    stem = column.name[: -len("_id")]
    for plural in (f"{stem}s", f"{stem}es", f"{stem[:-1]}ies" if stem.endswith("y") else None):
        if plural in keys:
            return plural
    return None


class TablesPart:
    """A part whose data is rows of tables, each with `tenant` and `user` columns, in one `Database`.

    Export: the user's rows per table (keyed by the names given, not the tables' own names, so the document is
    the same on both backends), binary columns in base64. Import: one transaction for the whole section. Rows
    with an id the database assigns get new ids, and columns that point at them (`entry_id` -> `entries`) are
    mapped to the new ones; a row equal in every other column to one the user already has is not written again
    (its id maps to that row), so importing the same document twice changes nothing. Rows keyed otherwise (a
    profile or a build record by the user, a response by its id) replace the user's row of that key. The
    counts are rows written.
    """

    def __init__(
        self,
        name: str,
        db: Database,
        tables: Mapping[str, sa.Table],
        *,
        forget: Callable[[str, str], Awaitable[Counts]] | None = None,
    ) -> None:
        self.name = name
        self.db = db
        # Forget deletes in this order (a store that locks its parent rows lists them first).
        self.tables = dict(tables)
        self._forget = forget
        keys = set(self.tables)
        self._refs: dict[str, dict[str, str]] = {
            key: {c.name: ref for c in table.columns if (ref := _referenced(c, keys)) is not None and ref != key}
            for key, table in self.tables.items()
        }

    # -- forget ----------------------------------------------------------------------------------------

    async def forget(self, tenant: str, user: str) -> Counts:
        if self._forget is not None:
            return await self._forget(tenant, user)
        return await self.db.run(self._forget_sync, tenant, user)

    def _forget_sync(self, tenant: str, user: str) -> Counts:
        with self.db.write() as conn:
            return {
                key: int(conn.execute(sa.delete(table).where(_scope(table, tenant, user))).rowcount)
                for key, table in self.tables.items()
            }

    # -- export ----------------------------------------------------------------------------------------

    async def export(self, tenant: str, user: str) -> dict[str, list[dict[str, Any]]]:
        return await self.db.run(self._export_sync, tenant, user)

    def _export_sync(self, tenant: str, user: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        with self.db.read() as conn:
            for key, table in self.tables.items():
                order = list(table.primary_key.columns)
                rows = conn.execute(sa.select(table).where(_scope(table, tenant, user)).order_by(*order)).mappings()
                out[key] = [_encode(table, row) for row in rows]
        return out

    async def owners(self, tenant: str) -> set[str]:
        return await self.db.run(self._owners_sync, tenant)

    def _owners_sync(self, tenant: str) -> set[str]:
        with self.db.read() as conn:
            return {
                str(value)
                for table in self.tables.values()
                for value in conn.execute(sa.select(table.c.user).where(table.c.tenant == tenant).distinct()).scalars()
            }

    # -- import ----------------------------------------------------------------------------------------

    async def import_(self, tenant: str, user: str, data: Any) -> Counts:
        if not isinstance(data, Mapping):
            raise ImportFailed(f"the {self.name} section must be an object of tables")
        unknown = sorted(set(data) - set(self.tables))
        if unknown:
            raise ImportFailed(f"the {self.name} section names unknown tables {unknown} (known: {sorted(self.tables)})")
        for key, rows in data.items():
            if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
                raise ImportFailed(f"{self.name}.{key} must be a list of rows")
        return await self.db.run(self._import_sync, tenant, user, data)

    def _import_sync(self, tenant: str, user: str, data: Mapping[str, list[Mapping[str, Any]]]) -> Counts:
        counts: Counts = {}
        new_ids: dict[str, dict[int, int]] = {key: {} for key in self.tables}
        with self.db.write() as conn:
            for key in self._import_order():
                table = self.tables[key]
                rows = data.get(key) or []
                counts[key] = sum(
                    self._import_row(conn, key, table, tenant, user, row, new_ids) for row in rows
                )
        return counts

    def _import_order(self) -> list[str]:
        """Tables pointed at before the tables pointing at them (their new ids are needed first)."""
        done: list[str] = []
        pending = list(self.tables)
        while pending:
            ready = [k for k in pending if all(ref in done for ref in self._refs[k].values())]
            if not ready:  # a cycle: keep the declared order for the rest
                ready = pending[:1]
            for key in ready:
                done.append(key)
                pending.remove(key)
        return done

    def _import_row(
        self, conn: Connection, key: str, table: sa.Table, tenant: str, user: str, raw: Mapping[str, Any],
        new_ids: dict[str, dict[int, int]],
    ) -> int:
        unknown = set(raw) - set(table.c.keys())
        if unknown:
            raise ImportFailed(f"{self.name}.{key}: unknown columns {sorted(unknown)}")
        row = _decode(table, raw)
        row["tenant"], row["user"] = tenant, user
        for column, ref in self._refs[key].items():
            if row.get(column) is None:
                continue
            mapped = new_ids[ref].get(int(row[column]))
            if mapped is None and not table.c[column].nullable:
                return 0  # points at a row the section did not carry: an orphan is not imported
            row[column] = mapped
        own = next((c for c in table.primary_key.columns if _is_own_id(table, c)), None)
        if own is None:
            if _same(conn, table, row, table.c[next(iter(row))]) is not None:
                return 0  # already there as exported: nothing to write
            keys = [c.name for c in table.primary_key.columns]
            stmt = self.db.insert(table).values(**row)
            update = {name: stmt.excluded[name] for name in row if name not in keys}
            conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update) if update
                         else stmt.on_conflict_do_nothing(index_elements=keys))
            return 1
        old = row.pop(own.name, None)
        existing = _same(conn, table, row, own)
        if existing is not None:
            new = int(existing)
            written = 0
        else:
            new = int(conn.execute(sa.insert(table).values(**row).returning(own)).scalar_one())
            written = 1
        if old is not None:
            new_ids[key][int(old)] = new
        return written


def _same(conn: Connection, table: sa.Table, row: Mapping[str, Any], column: sa.Column[Any]) -> Any:
    """`column` of the row equal to `row` in every column it names (None: there is none)."""
    where = [table.c[name] == value if value is not None else table.c[name].is_(None) for name, value in row.items()]
    return conn.execute(sa.select(column).where(*where).limit(1)).scalar_one_or_none()


def _scope(table: sa.Table, tenant: str, user: str) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.tenant == tenant, table.c.user == user)


def _encode(table: sa.Table, row: sa.RowMapping) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in table.columns:
        if column.name in ("tenant", "user"):
            continue
        value = row[column.name]
        if isinstance(value, bytes | memoryview):
            value = base64.b64encode(bytes(value)).decode("ascii")
        out[column.name] = value
    return out


def _decode(table: sa.Table, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in ("tenant", "user"):
            continue
        if value is not None and isinstance(table.c[name].type, sa.LargeBinary):
            if not isinstance(value, str):
                raise ImportFailed(f"{table.name}.{name} must be base64 text")
            value = base64.b64decode(value, validate=True)
        out[name] = value
    return out
