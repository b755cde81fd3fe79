"""The migration from an embedded data dir into PostgreSQL: order, progress, and the count check at the end.

1. Take the data dir's lock (proxy/datadir_lock.py): a server serving it would keep writing behind our back, so
   the migration refuses to start while one holds it, and no server can start on it while the copy runs.
2. Create or upgrade every schema in the target (what `rapport db upgrade` does).
3. Flush the memory staging journal into the embedded Chroma.
4. Copy each SQL store, then the memory items with their vectors; one progress bar per store.
5. Look every source row up in the target by its primary key, per store and per user: the result is a table
   of source vs found counts, and the migration fails when any differs.

Nothing here prints the database URL: where the target is comes from `Databases.describe()` (host and database).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from memory.config import MemorySettings
from memory.pg_store import PgVectorStore
from proxy.datadir_lock import DataDirLock
from proxy.migrate.tables import TABLE_COPIES, Checked, TableCopy, check_table, copy_table, count_source
from proxy.migrate.vectors import EmbeddedMemory, VectorCheck, check_vectors, copy_vectors, dimension
from rapport.core.database import Database, Databases
from rapport.core.migrations import Schema, migrate

MEMORY_LABEL = "memory items"
UserKey = tuple[str, str]
# What the caller shows progress with: start(label, total) returns advance(n).
Progress = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True, slots=True)
class StoreResult:
    label: str
    source: int
    found: int
    copied: int  # inserted by this run (0 on a re-run)
    target_total: int
    left_out: int = 0
    by_user: dict[UserKey, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.source == self.found and all(n == f for n, f in self.by_user.values())


@dataclass(slots=True)
class MigrationReport:
    staged_flushed: int = 0
    stores: list[StoreResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stores)

    def user_mismatches(self) -> list[tuple[str, UserKey, int, int]]:
        return [
            (s.label, user, n, f) for s in self.stores for user, (n, f) in sorted(s.by_user.items()) if n != f
        ]

    def users_checked(self) -> int:
        return len({user for s in self.stores for user in s.by_user})


class NotADataDir(ValueError):
    pass


def _sources(data_dir: Path) -> dict[str, Database]:
    """The data dir's SQLite files that exist, opened (never created)."""
    opened: dict[str, Database] = {}
    for spec in TABLE_COPIES:
        path = spec.source_file(data_dir)
        if spec.store not in opened and path.is_file():
            opened[spec.store] = Database.sqlite(path)
    return opened


def migrate_data_dir(
    data_dir: Path,
    databases: Databases,
    schemas: list[Schema],
    memory_settings: MemorySettings,
    progress: Progress,
) -> MigrationReport:
    """Copy `data_dir` into the shared database of `databases`. Raises DataDirInUse while a server holds it."""
    if not data_dir.is_dir():
        raise NotADataDir(f"{data_dir} is not a directory")
    lock = DataDirLock(data_dir)
    lock.acquire()
    sources = _sources(data_dir)
    try:
        memory = EmbeddedMemory(data_dir, memory_settings)
        if not sources and not memory.exists:
            raise NotADataDir(f"{data_dir} holds none of Rapport's stores (no *.sqlite3 files, no memory/chroma)")
        for schema in schemas:
            if schema.applies_to("postgresql"):
                migrate(databases.for_store(schema.store), schema)
        report = MigrationReport()
        report.staged_flushed = memory.flush_staging() if memory.exists else 0
        for spec in TABLE_COPIES:
            src = sources.get(spec.store)
            if src is not None:
                report.stores.append(_copy_store(src, databases.for_store(spec.store), spec, progress))
        if memory.exists:
            report.stores.append(_copy_memory(memory, databases.for_store("memory"), progress))
        return report
    finally:
        for db in sources.values():
            db.close()
        lock.release()


def _copy_store(src: Database, dst: Database, spec: TableCopy, progress: Progress) -> StoreResult:
    total, _ = count_source(src, spec)
    copied = copy_table(src, dst, spec, progress(spec.label, total))
    checked: Checked = check_table(src, dst, spec)
    return StoreResult(
        spec.label, checked.source, checked.found, copied, checked.target_total, checked.left_out, checked.by_user
    )


def _copy_memory(memory: EmbeddedMemory, dst: Database, progress: Progress) -> StoreResult:
    dim = dimension(memory)
    if dim is None:
        return StoreResult(MEMORY_LABEL, 0, 0, 0, 0)
    # Indexes of large users are built here, not in a background thread that the process would outlive.
    target = PgVectorStore(dst, dim, build_in_background=False)
    try:
        copied = copy_vectors(memory, target, progress(MEMORY_LABEL, memory.count()))
        checked: VectorCheck = check_vectors(memory, target, dst)
    finally:
        target.close()
    return StoreResult(MEMORY_LABEL, checked.source, checked.found, copied, checked.target_total, 0, checked.by_user)
