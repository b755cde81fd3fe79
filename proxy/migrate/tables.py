"""Copy the SQL stores of an embedded data dir (one SQLite file per store) into the shared PostgreSQL database.

Every row keeps its primary key and is inserted only where that key is absent (ON CONFLICT DO NOTHING), in
committed chunks: a second run, or a run resumed after an interruption, copies nothing twice. Source tables are
reflected rather than taken from the current schema, so a file still at an older schema version (the jobs table
before leases) copies its columns and the target's defaults fill the rest.

What is deliberately left out, and counted as such:
- jobs that finished (succeeded or failed): only pending work moves; a job left `running` by the stopped
  server is an attempt that never finished, copied as pending with no owner or lease (as the jobs v2
  migration treats it);
- RPM features and paths whose history entry is gone (SQLite does not enforce the foreign key; PostgreSQL does).

The forget log is the one table copied by content rather than by key: its ids are only an order, and a
database that replicas already served holds forgets of its own under the same small ids, so a copy by id would
skip a logged forget that another row's id shadows, and a restore could then bring that user back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memory.catalog_schema import STORE as CATALOG_STORE
from memory.catalog_schema import summaries, users
from memory.job_schema import ACTIVE, jobs
from proxy.auth.key_schema import api_keys
from proxy.entrypoints.responses.store_schema import STORE as RESPONSES_STORE
from proxy.entrypoints.responses.store_schema import responses
from rapport.core.database import Database
from rapport.core.forget_log import forget_log
from reasoning.rpm.store_schema import STORE as RPM_STORE
from reasoning.rpm.store_schema import TABLES as RPM_TABLES
from reasoning.vas.store_schema import STORE as VAS_STORE
from reasoning.vas.store_schema import vas_profiles

# Rows per read batch and per committed insert: 1000 rows of the widest table stay far below PostgreSQL's
# 65,535 bind parameters, and an interrupted run loses at most one chunk of work.
CHUNK = 500
UserKey = tuple[str, str]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TableCopy:
    label: str
    store: str  # the embedded store: its file is `<data_dir>/<store>.sqlite3`
    source: str  # the table's name in that file
    target: sa.Table  # the table in PostgreSQL
    # Which source rows move (None: all); given the reflected source table.
    where: Callable[[sa.Table], sa.ColumnElement[bool]] | None = None
    transform: Callable[[Row], Row] | None = None
    per_user: bool = True  # has (tenant, user) columns naming whose data a row is
    identity: bool = False  # PostgreSQL generates its ids: move the sequence past the copied ones
    # Copy by these columns instead of the primary key: a source row whose values are absent from the target
    # is inserted without its id (the target assigns one), and the check looks rows up by them.
    by_content: tuple[str, ...] = ()

    def source_file(self, data_dir: Path) -> Path:
        return data_dir / f"{self.store}.sqlite3"


def _pending_job(row: Row) -> Row:
    # A `running` job in a stopped data dir belongs to no live worker: its attempt did not finish.
    return {
        **row,
        "status": "pending",
        "owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "rerun": bool(row.get("rerun") or False),
    }


def _with_entry(entries: str) -> Callable[[sa.Table], sa.ColumnElement[bool]]:
    def where(table: sa.Table) -> sa.ColumnElement[bool]:
        return table.c.entry_id.in_(sa.select(sa.column("id")).select_from(sa.table(entries)))

    return where


_SQLITE_RPM = RPM_TABLES["sqlite"]
_PG_RPM = RPM_TABLES["postgresql"]

# In dependency order: RPM entries before the features and paths that reference them.
TABLE_COPIES: tuple[TableCopy, ...] = (
    TableCopy("keys", "keys", "api_keys", api_keys, per_user=False),
    TableCopy("users", CATALOG_STORE, "users", users),
    TableCopy("summaries", CATALOG_STORE, "summaries", summaries),
    TableCopy(
        "jobs (pending)", "jobs", "jobs", jobs, where=lambda t: t.c.status.in_(ACTIVE), transform=_pending_job
    ),
    TableCopy("rpm history", RPM_STORE, _SQLITE_RPM.entries.name, _PG_RPM.entries, identity=True),
    TableCopy(
        "rpm features", RPM_STORE, _SQLITE_RPM.features.name, _PG_RPM.features,
        where=_with_entry(_SQLITE_RPM.entries.name), identity=True,
    ),
    TableCopy("rpm factors", RPM_STORE, _SQLITE_RPM.factors.name, _PG_RPM.factors, identity=True),
    TableCopy(
        "rpm paths", RPM_STORE, _SQLITE_RPM.paths.name, _PG_RPM.paths, where=_with_entry(_SQLITE_RPM.entries.name)
    ),
    TableCopy("rpm builds", RPM_STORE, _SQLITE_RPM.builds.name, _PG_RPM.builds),
    # Responses a feedback may still refer to (their feedback entries are in rpm history already).
    TableCopy("rpm issued", RPM_STORE, _SQLITE_RPM.issued.name, _PG_RPM.issued),
    TableCopy("vas profiles", VAS_STORE, "vas_profiles", vas_profiles),
    TableCopy("responses", RESPONSES_STORE, "responses", responses),
    # In the job queue's database on both sides; the user is a digest, so there is no per-user count.
    TableCopy("forget log", "jobs", forget_log.name, forget_log, per_user=False,
              by_content=("tenant", "user_digest", "forgotten_at")),
)


@dataclass(slots=True)
class Checked:
    """Source rows against the target: how many of them the target holds, in all and per user."""

    source: int = 0
    found: int = 0
    left_out: int = 0  # source rows not moved by rule (finished jobs, orphaned RPM rows)
    target_total: int = 0
    by_user: dict[UserKey, tuple[int, int]] = field(default_factory=dict)  # user -> (source, found)


def reflect(conn: Connection, name: str) -> sa.Table | None:
    if not sa.inspect(conn).has_table(name):
        return None
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def _columns(spec: TableCopy, source: sa.Table) -> list[str]:
    return [c.name for c in spec.target.columns if c.name in source.c]


def _key_columns(spec: TableCopy) -> list[str]:
    """What identifies a row in the target: its content columns where the table is copied by content, else
    the primary key."""
    return list(spec.by_content) or [c.name for c in spec.target.primary_key.columns]


def _present(conn: Connection, spec: TableCopy, names: list[str], rows: list[Row]) -> set[tuple[Any, ...]]:
    """The `names` values of the target rows whose key columns match one of `rows`."""
    key = _key_columns(spec)
    columns = [spec.target.c[c] for c in key]
    keys = list({tuple(r[c] for c in key) for r in rows})
    match = sa.tuple_(*columns).in_(keys) if len(key) > 1 else columns[0].in_([k[0] for k in keys])
    return {tuple(r) for r in conn.execute(sa.select(*(spec.target.c[n] for n in names)).where(match))}


def _select(spec: TableCopy, source: sa.Table, names: list[str]) -> sa.Select[Any]:
    pk = [source.c[c.name] for c in spec.target.primary_key.columns]
    stmt = sa.select(*(source.c[n] for n in names)).order_by(*pk)
    return stmt.where(spec.where(source)) if spec.where is not None else stmt


def count_source(src: Database, spec: TableCopy) -> tuple[int, int]:
    """(rows to move, rows left out by rule)."""
    with src.read() as conn:
        source = reflect(conn, spec.source)
        if source is None:
            return 0, 0
        total = int(conn.execute(sa.select(sa.func.count()).select_from(source)).scalar_one())
        if spec.where is None:
            return total, 0
        moving = int(conn.execute(sa.select(sa.func.count()).select_from(source).where(spec.where(source))).scalar_one())
        return moving, total - moving


def _batches(src: Database, spec: TableCopy, names: list[str] | None = None) -> Iterator[list[Row]]:
    with src.read() as conn:
        source = reflect(conn, spec.source)
        if source is None:
            return
        cols = names if names is not None else _columns(spec, source)
        result = conn.execution_options(yield_per=CHUNK).execute(_select(spec, source, cols))
        for part in result.mappings().partitions(CHUNK):
            yield [dict(row) for row in part]


def copy_table(src: Database, dst: Database, spec: TableCopy, advance: Callable[[int], None]) -> int:
    """Insert the source rows absent from the target, one committed chunk at a time; returns rows inserted."""
    inserted = 0
    for rows in _batches(src, spec):
        if spec.transform is not None:
            rows = [spec.transform(r) for r in rows]
        if spec.by_content:
            inserted += _copy_by_content(dst, spec, rows)
            advance(len(rows))
            continue
        with dst.write() as conn:
            # No conflict target: any unique key that holds the row already (the primary key, or the jobs'
            # active-dedupe index) means it is there; nothing is overwritten.
            stmt = dst.insert(spec.target).values(rows).on_conflict_do_nothing()
            # RETURNING names the rows this statement inserted (a multi-row VALUES reports no rowcount).
            inserted += len(conn.execute(stmt.returning(*spec.target.primary_key.columns)).all())
        advance(len(rows))
    if spec.identity:
        _advance_identity(dst, spec.target)
    return inserted


def _copy_by_content(dst: Database, spec: TableCopy, rows: list[Row]) -> int:
    """Insert the rows whose content the target lacks, without their ids; a rerun finds them all present."""
    key = list(spec.by_content)
    with dst.write() as conn:
        present = _present(conn, spec, key, rows)
        absent: dict[tuple[Any, ...], Row] = {}
        for row in rows:
            values = tuple(row[c] for c in key)
            if values not in present:
                absent.setdefault(values, {c: row[c] for c in _columns_without_id(spec, row)})
        if absent:
            conn.execute(sa.insert(spec.target), list(absent.values()))
    return len(absent)


def _columns_without_id(spec: TableCopy, row: Row) -> list[str]:
    pk = {c.name for c in spec.target.primary_key.columns}
    return [name for name in row if name not in pk]


def _advance_identity(dst: Database, table: sa.Table) -> None:
    """Ids were copied as they were: the identity sequence must hand out ids after them."""
    with dst.write() as conn:
        conn.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table.name}), 1), "
                f"(SELECT MAX(id) FROM {table.name}) IS NOT NULL)"
            )
        )


def check_table(src: Database, dst: Database, spec: TableCopy) -> Checked:
    """Look every source row up in the target: by primary key, and for per-user tables with the same tenant and
    user (a row of another user holding the key, say from another data dir's ids, is not this row)."""
    checked = Checked()
    checked.source, checked.left_out = count_source(src, spec)
    names = list(dict.fromkeys([*_key_columns(spec), *(["tenant", "user"] if spec.per_user else [])]))
    source_by_user: Counter[UserKey] = Counter()
    found_by_user: Counter[UserKey] = Counter()
    for rows in _batches(src, spec, names):
        with dst.read() as conn:
            present = _present(conn, spec, names, rows)
        for r in rows:
            here = tuple(r[n] for n in names) in present
            checked.found += here
            if spec.per_user:
                user = (str(r["tenant"]), str(r["user"]))
                source_by_user[user] += 1
                found_by_user[user] += here
    with dst.read() as conn:
        checked.target_total = int(conn.execute(sa.select(sa.func.count()).select_from(spec.target)).scalar_one())
    checked.by_user = {u: (n, found_by_user[u]) for u, n in source_by_user.items()}
    return checked
