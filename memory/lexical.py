"""A lexical index beside the vectors: BM25 over SQLite FTS5, and each item's place in its conversation.

Dense MiniLM similarity between a question and the turn that answers it is weak when what links them is a
name or a rare word; BM25 rewards exactly those (inverse document frequency). The same table also knows each
item's conversation and time, which is what finding a retrieved turn's neighbours needs.

Nothing per user is kept in memory: every call is a query on the SQLite file (data_dir/memory/lexical.sqlite3).
A Postgres deployment implements the same `LexicalIndex` protocol with its own full-text search.

Layout: `docs` maps a rowid to (tenant, user, item id) with the item's conversation, time and role; `fts` is an
FTS5 table with the same rowid holding an owner token (a digest of tenant and user) and the text. The owner
token is part of the MATCH, so a search reads only the user's rows of each posting list that FTS5 intersects,
and the docs join checks tenant and user again.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from memory.items import MemoryItem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    rowid INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    item_id TEXT NOT NULL,
    conversation_id TEXT,
    ts REAL NOT NULL,
    role TEXT NOT NULL,
    UNIQUE (tenant, user, item_id)
);
CREATE INDEX IF NOT EXISTS docs_conversation ON docs (tenant, user, conversation_id, ts);
CREATE INDEX IF NOT EXISTS docs_time ON docs (tenant, user, ts);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    owner, body, tokenize = 'porter unicode61 remove_diacritics 2'
);
"""

# Words that carry no signal in a question and only widen the OR: BM25 gives them a small weight anyway, but
# each one costs a posting-list read.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not of
    off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves s t don""".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 32


def query_terms(text: str, max_terms: int = MAX_TERMS) -> list[str]:
    """The words of `text` worth matching: lowercased, stopwords and repeats dropped, in order.

    Only runs of word characters survive, so nothing of FTS5's query syntax (quotes, parentheses, `*`, `:`,
    `^`, `-`, `+`) can reach the MATCH expression; each term is then quoted there, so AND/OR/NOT/NEAR are words.
    """
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        seen.setdefault(word, None)
        if len(seen) >= max_terms:
            break
    return list(seen)


def owner_token(tenant: str, user: str) -> str:
    # One token for the unicode61 tokenizer (letters and digits only), whatever the ids contain.
    return "o" + hashlib.sha256(f"{tenant}\x00{user}".encode()).hexdigest()[:32]


def match_expression(tenant: str, user: str, terms: list[str]) -> str:
    alternatives = " OR ".join(f'"{term}"' for term in terms)
    return f'owner : "{owner_token(tenant, user)}" AND body : ({alternatives})'


@dataclass(frozen=True, slots=True)
class LexicalHit:
    id: str
    score: float  # BM25, higher is better (FTS5's bm25() negated)


class LexicalIndex(Protocol):
    def add(self, items: list[MemoryItem]) -> None:
        """Index items, replacing the text and place of any already indexed under the same id."""
        ...

    def delete(self, tenant: str, user: str, ids: list[str]) -> None: ...

    def delete_user(self, tenant: str, user: str) -> int: ...

    def search(self, tenant: str, user: str, query: str, n: int) -> list[LexicalHit]:
        """The user's best `n` items for the query's words, best first (empty for a query with no words)."""
        ...

    def neighbours(
        self, tenant: str, user: str, items: list[MemoryItem], max_gap_s: float
    ) -> dict[str, list[MemoryItem]]:
        """For each item, the user's item just before and just after it: in the same conversation when it
        has one, else adjacent in time within `max_gap_s`. Chronological, the item itself left out."""
        ...

    def count(self, tenant: str, user: str) -> int: ...

    def close(self) -> None: ...


class SqliteLexicalIndex:
    """`LexicalIndex` on one SQLite file with FTS5 (the embedded default)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._write = self._connect()
        self._write.executescript(_SCHEMA)
        # Writers are serialized here (edits and deletes run on the read pool, ingest on the write thread);
        # readers each use their own connection and, in WAL mode, never wait for a writer.
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # -- writes -------------------------------------------------------------------------------------

    def add(self, items: list[MemoryItem]) -> None:
        if not items:
            return
        with self._write_lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                for item in items:
                    row = conn.execute(
                        "SELECT rowid FROM docs WHERE tenant = ? AND user = ? AND item_id = ?",
                        (item.tenant, item.user, item.id),
                    ).fetchone()
                    if row is not None:
                        conn.execute(
                            "UPDATE docs SET conversation_id = ?, ts = ?, role = ? WHERE rowid = ?",
                            (item.conversation_id, float(item.ts), item.role, row[0]),
                        )
                        conn.execute("UPDATE fts SET body = ? WHERE rowid = ?", (item.text, row[0]))
                        continue
                    cursor = conn.execute(
                        "INSERT INTO docs (tenant, user, item_id, conversation_id, ts, role) VALUES (?,?,?,?,?,?)",
                        (item.tenant, item.user, item.id, item.conversation_id, float(item.ts), item.role),
                    )
                    conn.execute(
                        "INSERT INTO fts (rowid, owner, body) VALUES (?,?,?)",
                        (cursor.lastrowid, owner_token(item.tenant, item.user), item.text),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _delete_rows(self, rowids: Iterable[int]) -> int:
        rows = [(r,) for r in rowids]
        if rows:
            self._write.executemany("DELETE FROM fts WHERE rowid = ?", rows)
            self._write.executemany("DELETE FROM docs WHERE rowid = ?", rows)
        return len(rows)

    def delete(self, tenant: str, user: str, ids: list[str]) -> None:
        if not ids:
            return
        with self._write_lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(ids))
                rowids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT rowid FROM docs WHERE tenant = ? AND user = ? AND item_id IN ({marks})",
                        (tenant, user, *ids),
                    )
                ]
                self._delete_rows(rowids)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def delete_user(self, tenant: str, user: str) -> int:
        with self._write_lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                rowids = [
                    r[0]
                    for r in conn.execute("SELECT rowid FROM docs WHERE tenant = ? AND user = ?", (tenant, user))
                ]
                removed = self._delete_rows(rowids)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return removed

    # -- reads --------------------------------------------------------------------------------------

    def search(self, tenant: str, user: str, query: str, n: int) -> list[LexicalHit]:
        terms = query_terms(query)
        if not terms or n <= 0:
            return []
        rows = self._reader().execute(
            "SELECT d.item_id, bm25(fts, 0.0, 1.0) AS rank FROM fts JOIN docs d ON d.rowid = fts.rowid "
            "WHERE fts MATCH ? AND d.tenant = ? AND d.user = ? ORDER BY rank LIMIT ?",
            (match_expression(tenant, user, terms), tenant, user, n),
        ).fetchall()
        return [LexicalHit(str(item_id), -float(rank)) for item_id, rank in rows]

    def neighbours(
        self, tenant: str, user: str, items: list[MemoryItem], max_gap_s: float
    ) -> dict[str, list[MemoryItem]]:
        conn = self._reader()
        select = (
            "SELECT d.item_id, d.conversation_id, d.ts, d.role, f.body FROM docs d JOIN fts f ON f.rowid = d.rowid "
            "WHERE d.tenant = ? AND d.user = ? AND d.item_id != ? AND "
        )
        out: dict[str, list[MemoryItem]] = {}
        for item in items:
            found: list[MemoryItem] = []
            for compare, order in (("<", "DESC"), (">", "ASC")):
                if item.conversation_id is not None:
                    where = f"d.conversation_id = ? AND d.ts {compare}= ? ORDER BY d.ts {order} LIMIT 1"
                    params: tuple[object, ...] = (tenant, user, item.id, item.conversation_id, float(item.ts))
                else:
                    # No conversation: the adjacent item in time, if it is close enough to be the same exchange.
                    low, high = (item.ts - max_gap_s, item.ts) if compare == "<" else (item.ts, item.ts + max_gap_s)
                    where = f"d.ts BETWEEN ? AND ? ORDER BY d.ts {order} LIMIT 1"
                    params = (tenant, user, item.id, float(low), float(high))
                row = conn.execute(select + where, params).fetchone()
                if row is not None:
                    found.append(
                        MemoryItem(tenant, user, str(row[4]), str(row[3]), float(row[2]), row[1], id=str(row[0]))
                    )
            out[item.id] = sorted(found, key=lambda it: it.ts)
        return out

    def count(self, tenant: str, user: str) -> int:
        row = self._reader().execute(
            "SELECT count(*) FROM docs WHERE tenant = ? AND user = ?", (tenant, user)
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._write.close()
