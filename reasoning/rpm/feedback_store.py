"""The issued responses feedback refers to, and feedback written into RPM's history, on RPM's `Database`.

Each response RPM conditioned for a named user is remembered as (tenant, user, response id) -> the user's query
and the answer they got, so that the user's later rating, choice or correction of it can become a history entry.
Bounded twice: rows older than the retention are not found and are purged as new ones are written, and a user
keeps at most `max_per_user` (their oldest go first).

Feedback entries carry `source = "feedback:<key>"`, the issued row's random key: a second feedback on the same
response deletes the entries the first one wrote (with their features and reasoning paths) and writes its own,
in one transaction, so the history holds one feedback per response. The link lives in the entry itself, so it
survives an export and import of RPM's tables, whatever ids the entries get there.

A forget that lands while a response is on its way to being remembered (the write comes after the answer) must
not be outlived by it: the request reads the user's forget generation when it starts (`generation`), and the
write re-reads it inside its own transaction and writes nothing if a forget bumped it since. The read is ordered
against the forget's bump by a lock on the same row: on PostgreSQL the write makes the row if it is missing
(INSERT .. ON CONFLICT DO NOTHING, which waits for a forget inserting it) and reads it FOR SHARE (which waits for
a forget updating it); on SQLite the write transaction holds the file's only write lock from BEGIN.

Lock order, the same in every writer: the issued row, then the user's entries. A forget (RPMStore.forget_user)
deletes the issued rows first, so a feedback being applied commits before the forget deletes the entries it
wrote, and a feedback that comes after the forget finds no response (404).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.userdata import user_digest
from reasoning.rpm.store import RPMStore
from reasoning.rpm.store_schema import FORGETS, TABLES

SOURCE_PREFIX = "feedback:"
# Expired rows deleted per write: retention is enforced as rows are written, in small steps (no long sweep).
PURGE_BATCH = 100


@dataclass(frozen=True, slots=True)
class IssuedResponse:
    response_id: str
    key: str
    created_at: float
    input: str
    answer: str
    task: str | None
    feedback: dict[str, Any] | None = None
    feedback_at: float | None = None

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.key


@dataclass(frozen=True, slots=True)
class AppliedFeedback:
    entry_ids: list[int]
    # How many entries of an earlier feedback on the same response were replaced.
    replaced: int


class FeedbackStore:
    """Blocking calls, one transaction each; callers run them off the event loop."""

    def __init__(self, store: RPMStore, *, retention_s: float, max_per_user: int) -> None:
        self._store = store
        self.db = store.db
        tables = TABLES[self.db.dialect]
        self._issued, self._entries, self._features, self._paths = (
            tables.issued, tables.entries, tables.features, tables.paths,
        )
        self._forgets = FORGETS[self.db.dialect]
        self._retention_s = retention_s
        self._max_per_user = max_per_user

    def _cutoff(self) -> float:
        return time.time() - self._retention_s

    def _scope(self, table: sa.Table, tenant: str, user: str) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.tenant == tenant, table.c.user == user)

    # -- forget generations ------------------------------------------------------------------------
    def generation(self, tenant: str, user: str) -> int:
        """The user's forget generation now (0 until first forgotten): read as a request starts."""
        g = self._forgets
        with self.db.read() as conn:
            value = conn.execute(sa.select(g.c.generation).where(g.c.user_key == user_digest(tenant, user))).scalar()
        return int(value or 0)

    def _generation_locked(self, conn: Connection, tenant: str, user: str) -> int:
        g = self._forgets
        key = user_digest(tenant, user)
        conn.execute(self.db.insert(g).values(user_key=key, generation=0).on_conflict_do_nothing(index_elements=[g.c.user_key]))
        return int(conn.execute(sa.select(g.c.generation).where(g.c.user_key == key).with_for_update(read=True)).scalar_one())

    # -- issued responses --------------------------------------------------------------------------
    def remember(
        self, tenant: str, user: str, response_id: str, text: str, answer: str, task: str | None,
        created_at: float | None = None, *, generation: int | None = None,
    ) -> bool:
        """Keep what a feedback on this response needs; False (nothing written) when the user was forgotten
        since `generation` was read. The same id issued again (an upstream that repeats ids) is a new
        response: it gets a new key and no feedback, and the earlier answer's feedback stays."""
        t = self._issued
        values = {"key": secrets.token_hex(8), "created_at": created_at or time.time(), "input": text,
                  "answer": answer, "task": task, "feedback": None, "feedback_at": None}
        stmt = self.db.insert(t).values(tenant=tenant, user=user, id=response_id, **values)
        newest = (
            sa.select(t.c.id)
            .where(self._scope(t, tenant, user))
            .order_by(t.c.created_at.desc(), t.c.id.desc())
            .limit(self._max_per_user)
        )
        expired = (
            sa.select(t.c.tenant, t.c.user, t.c.id)
            .where(t.c.created_at < self._cutoff())
            .limit(PURGE_BATCH)
            # PostgreSQL: replicas purging at once take different rows instead of waiting on each other.
            .with_for_update(skip_locked=True)
        )
        with self.db.write() as conn:
            if generation is not None and self._generation_locked(conn, tenant, user) != generation:
                return False
            conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.tenant, t.c.user, t.c.id], set_=values))
            conn.execute(sa.delete(t).where(self._scope(t, tenant, user), t.c.id.not_in(newest)))
            conn.execute(sa.delete(t).where(sa.tuple_(t.c.tenant, t.c.user, t.c.id).in_(expired)))
        return True

    def issued(self, tenant: str, user: str, response_id: str) -> IssuedResponse | None:
        t = self._issued
        query = sa.select(t).where(self._scope(t, tenant, user), t.c.id == response_id, t.c.created_at >= self._cutoff())
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _issued(row) if row is not None else None

    def count(self, tenant: str, user: str) -> int:
        t = self._issued
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t).where(self._scope(t, tenant, user))).scalar_one())

    # -- feedback ----------------------------------------------------------------------------------
    def apply(
        self, tenant: str, user: str, issued: IssuedResponse, items: list[tuple[str, str, str | None]],
        feedback: dict[str, Any],
    ) -> AppliedFeedback | None:
        """Replace the response's feedback entries with `items` (input, response, task); None when the
        response is not (or no longer) there for this user, or was issued again since `issued` was read
        (the items describe the earlier answer)."""
        response_id = issued.response_id
        t = self._issued
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(t.c.key)
                .where(self._scope(t, tenant, user), t.c.id == response_id, t.c.created_at >= self._cutoff())
                .with_for_update()
            ).first()
            if row is None or row.key != issued.key:
                return None
            source = SOURCE_PREFIX + str(row.key)
            replaced = self._delete_entries(conn, tenant, user, source)
            ids = self._store.insert_entries(conn, tenant, user, items, source, now)
            conn.execute(
                sa.update(t)
                .where(self._scope(t, tenant, user), t.c.id == response_id)
                .values(feedback=json.dumps(feedback), feedback_at=now)
            )
        return AppliedFeedback(ids, replaced)

    def _delete_entries(self, conn: Connection, tenant: str, user: str, source: str) -> int:
        """An earlier feedback's entries with their features and paths (explicitly: SQLite does not enforce
        the schema's ON DELETE CASCADE unless every connection turns foreign keys on)."""
        e, f, p = self._entries, self._features, self._paths
        old = [int(i) for i in conn.execute(
            sa.select(e.c.id).where(self._scope(e, tenant, user), e.c.source == source)
        ).scalars()]
        if not old:
            return 0
        conn.execute(sa.delete(e).where(self._scope(e, tenant, user), e.c.id.in_(old)))
        conn.execute(sa.delete(f).where(self._scope(f, tenant, user), f.c.entry_id.in_(old)))
        conn.execute(sa.delete(p).where(self._scope(p, tenant, user), p.c.entry_id.in_(old)))
        return len(old)


def _issued(row: Any) -> IssuedResponse:
    return IssuedResponse(
        response_id=row["id"], key=row["key"], created_at=row["created_at"], input=row["input"],
        answer=row["answer"], task=row["task"], feedback=json.loads(row["feedback"]) if row["feedback"] else None,
        feedback_at=row["feedback_at"],
    )
