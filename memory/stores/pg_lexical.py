"""Lexical retrieval on PostgreSQL: full-text search over the memory items, ranked by BM25 or ts_rank_cd, and
each item's conversation neighbours; the `LexicalIndex` of shared-state deployments.

Layout (migration 2 of the `memory_vectors` schema, memory/pg_store.py): `memory_items` gains a generated
column `lexemes`, the item's English lexemes (`to_tsvector('english', text)`, Porter stemming, stopwords
dropped, positions kept) plus one owner lexeme, a digest of (tenant, user), and a GIN index on it. Being
generated, the column follows every insert, edit and delete of the items themselves: nothing to keep in step,
and a forget that deletes the rows deletes their lexemes in the same transaction.

Why the owner lexeme: a GIN index cannot be combined with the (tenant, user_id) btree in one scan (btree_gin
is not in pgvector's wheel, nor always installed), and a plain `lexemes @@ query` reads every user's posting
list of each word. The query asks `owner & (w1 | w2 | ...)`: GIN intersects the owner's short posting list
with the words' long ones, skipping through them, so a search costs about the user's matches, not the table's.
The WHERE on tenant and user_id is repeated, so a row never scores for another user even if someone writes
another user's owner digest as a word.

Ranking. `ts_rank_cd` (cover density) knows each document alone: it has no inverse document frequency, so a
word that half of the user's items contain weighs as much as a name said once. BM25 is computed here in SQL
at query time from that user's own statistics: N (the user's items) and the mean length, from a small table
that triggers on the items keep (migration 3; measured against computing them per query, see
`add_lexical_stats`), and per query word its document frequency among the user's items, which is exactly the
number of matched rows that hold it (every item holding a query word is matched). The length of an item is its
number of distinct lexemes (`length(tsvector)` less the owner): a tsvector keeps positions, not a token count,
and turns are short enough that few words repeat. Which of the two ranks better is measured in
bench/locomo_recall.py (--store postgres), the latency at 100k items in bench/pg_lexical.py.

Nothing per user is held in the process: every call is a query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memory.items import MemoryItem
from memory.lexical import LexicalHit, query_terms
from rapport.core.database import Database

Rank = Literal["bm25", "ts_rank_cd"]
RANKS: tuple[Rank, ...] = ("bm25", "ts_rank_cd")
# The text-search configuration of the lexemes column and of queries (they must agree).
TS_CONFIG = "english"
# BM25's usual constants (FTS5's bm25() uses the same).
BM25_K1 = 1.2
BM25_B = 0.75
GIN_INDEX = "memory_items_lexemes"
# Per user: how many items and how many lexemes they hold (BM25's N and mean length), kept by a trigger.
STATS_TABLE = "memory_lexical_stats"
STATS_FUNCTION = "memory_lexical_stats_apply"


def owner_lexeme(tenant: str, user: str) -> str:
    """The owner lexeme of (tenant, user), as the generated column computes it in SQL (the length prefix keeps
    ("ab", "c") and ("a", "bc") apart; md5 is only a digest here, nothing secret rests on it)."""
    return "o" + hashlib.md5(f"{len(tenant)}:{tenant}{user}".encode()).hexdigest()


def _owner_sql() -> str:
    return "'o' || md5(length(tenant)::text || ':' || tenant || user_id)"


def add_lexical_columns(conn: Connection, table: str) -> None:
    """Migration: the generated lexemes column (existing rows are filled as the table is rewritten), its GIN
    index, and the btree indexes that finding an item's neighbours needs."""
    conn.exec_driver_sql(
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS lexemes tsvector GENERATED ALWAYS AS ("
        f"array_to_tsvector(ARRAY[{_owner_sql()}]) || to_tsvector('{TS_CONFIG}'::regconfig, text)) STORED"
    )
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {GIN_INDEX} ON {table} USING gin (lexemes)")
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS {table}_conversation ON {table} (tenant, user_id, conversation_id, ts)"
    )
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {table}_time ON {table} (tenant, user_id, ts)")


def add_lexical_stats(conn: Connection, table: str) -> None:
    """Migration: the per-user statistics BM25 needs, filled from the rows present and kept by statement-level
    triggers on the items table (in the writing transaction: a forget's delete takes them along).

    Measured (bench/pg_lexical.py, bench/results/pg_lexical.json): computing N and the mean length at query
    time is one pass over the user's rows, 43 ms p50 / 61 ms p95 alone for a user holding 100k items, more than
    the whole BM25 search with this table (12.7 / 19.9 ms); the table makes it one primary-key lookup. Each write
    statement pays one upsert per user it touches, sorted by (tenant, user_id) so that two transactions take
    the rows in the same order."""
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {STATS_TABLE} (tenant text NOT NULL, user_id text NOT NULL, "
        "docs bigint NOT NULL, lexemes bigint NOT NULL, PRIMARY KEY (tenant, user_id))"
    )
    conn.exec_driver_sql(
        f"""
        CREATE OR REPLACE FUNCTION {STATS_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO {STATS_TABLE} AS s (tenant, user_id, docs, lexemes)
                    SELECT tenant, user_id, count(*), sum(length(lexemes) - 1) FROM new_rows
                    GROUP BY 1, 2 ORDER BY 1, 2
                    ON CONFLICT (tenant, user_id)
                    DO UPDATE SET docs = s.docs + EXCLUDED.docs, lexemes = s.lexemes + EXCLUDED.lexemes;
            ELSIF TG_OP = 'DELETE' THEN
                UPDATE {STATS_TABLE} AS s SET docs = s.docs - d.docs, lexemes = s.lexemes - d.lexemes
                    FROM (SELECT tenant, user_id, count(*) AS docs, sum(length(lexemes) - 1) AS lexemes
                          FROM old_rows GROUP BY 1, 2) AS d
                    WHERE s.tenant = d.tenant AND s.user_id = d.user_id;
                DELETE FROM {STATS_TABLE} AS s USING (SELECT DISTINCT tenant, user_id FROM old_rows) AS d
                    WHERE s.tenant = d.tenant AND s.user_id = d.user_id AND s.docs <= 0;
            ELSE
                UPDATE {STATS_TABLE} AS s SET lexemes = s.lexemes + d.delta
                    FROM (SELECT tenant, user_id, sum(n) AS delta FROM (
                              SELECT tenant, user_id, length(lexemes) - 1 AS n FROM new_rows
                              UNION ALL SELECT tenant, user_id, 1 - length(lexemes) FROM old_rows
                          ) AS changed GROUP BY 1, 2) AS d
                    WHERE s.tenant = d.tenant AND s.user_id = d.user_id;
            END IF;
            RETURN NULL;
        END
        $fn$
        """
    )
    for event, referencing in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ):
        name = f"{table}_lexical_stats_{event.lower()}"
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {STATS_FUNCTION}()"
        )
    conn.exec_driver_sql(
        f"INSERT INTO {STATS_TABLE} (tenant, user_id, docs, lexemes) "
        f"SELECT tenant, user_id, count(*), sum(length(lexemes) - 1) FROM {table} GROUP BY 1, 2 "
        "ON CONFLICT (tenant, user_id) DO UPDATE SET docs = EXCLUDED.docs, lexemes = EXCLUDED.lexemes"
    )


def tsquery_literal(lexemes: Sequence[str]) -> str:
    """A tsquery in its input syntax with every lexeme quoted (no operator or prefix syntax can come from
    them); the lexemes are already normalized, so no dictionary runs again."""
    quoted = ["'" + lex.replace("\\", "\\\\").replace("'", "''") + "'" for lex in lexemes]
    return " | ".join(quoted)


_NEIGHBOUR_COLUMNS = "id, conversation_id, ts, role, text"


class PgLexicalIndex:
    """`LexicalIndex` over the PostgreSQL memory table (module docstring). Writes are the table's own: `add`,
    `delete` and `delete_user` have nothing to do, the generated column follows the rows PgVectorStore writes."""

    ranks: tuple[Rank, ...] = RANKS

    def __init__(self, db: Database, table: str, *, rank: Rank = "bm25") -> None:
        if not db.is_postgres:
            raise ValueError("PgLexicalIndex needs a PostgreSQL database")
        if rank not in RANKS:
            raise ValueError(f"unknown lexical rank {rank!r}; one of {', '.join(RANKS)}")
        self.db = db
        self.table = table
        self.rank: Rank = rank

    # -- writes: the items table's own ----------------------------------------------------------------

    def add(self, items: list[MemoryItem]) -> None:
        return None

    def delete(self, tenant: str, user: str, ids: list[str]) -> None:
        return None

    def delete_user(self, tenant: str, user: str) -> int:
        return 0

    # -- reads ----------------------------------------------------------------------------------------

    def lexemes(self, conn: Connection, query: str) -> list[str]:
        """The query's lexemes: its words (memory.lexical.query_terms: word characters only, the embedded
        index's stopwords dropped) normalized by the column's configuration."""
        terms = query_terms(query)
        if not terms:
            return []
        found = conn.execute(
            sa.text(f"SELECT tsvector_to_array(to_tsvector('{TS_CONFIG}'::regconfig, :words))"),
            {"words": " ".join(terms)},
        ).scalar_one()
        return [str(lex) for lex in found or []]

    def search(self, tenant: str, user: str, query: str, n: int, rank: Rank | None = None) -> list[LexicalHit]:
        rank = self.rank if rank is None else rank
        if rank not in RANKS:
            raise ValueError(f"unknown lexical rank {rank!r}; one of {', '.join(RANKS)}")
        if n <= 0:
            return []
        with self.db.read() as conn:
            owner = owner_lexeme(tenant, user)
            # The user's own owner digest typed as a word would match every row of the user: not a word.
            lexemes = [lex for lex in self.lexemes(conn, query) if lex != owner]
            if not lexemes:
                return []
            words = tsquery_literal(lexemes)
            params: dict[str, Any] = {
                "t": tenant,
                "u": user,
                "n": n,
                "match": f"'{owner}' & ({words})",
                "words": words,
                "lex": lexemes,
            }
            sql = self._bm25_sql() if rank == "bm25" else self._ts_rank_cd_sql()
            rows = conn.execute(sa.text(sql), params).all()
        return [LexicalHit(str(item_id), float(score)) for item_id, score in rows]

    def _matched(self) -> str:
        return (
            f"SELECT id, lexemes FROM {self.table} "
            "WHERE tenant = :t AND user_id = :u AND lexemes @@ CAST(:match AS tsquery)"
        )

    def _ts_rank_cd_sql(self) -> str:
        return (
            f"SELECT id, ts_rank_cd(lexemes, CAST(:words AS tsquery)) AS score FROM ({self._matched()}) AS m "
            "ORDER BY score DESC, id LIMIT :n"
        )

    def _bm25_sql(self) -> str:
        # The user's N and mean length from the statistics table; each query word's document frequency from
        # the matched rows (every user's item holding a query word is among them).
        return f"""
            WITH matched AS ({self._matched()}),
            stats AS (
                SELECT docs::float8 AS n, greatest(lexemes::float8 / greatest(docs, 1), 1) AS avgdl
                FROM {STATS_TABLE} WHERE tenant = :t AND user_id = :u
            ),
            tf AS (
                -- Only the query's lexemes, with their positions: marked with weight A, the rest left at D,
                -- then filtered (cheaper than unnesting every lexeme of every matched row).
                SELECT m.id, e.lexeme, coalesce(cardinality(e.positions), 1)::float8 AS tf,
                       (length(m.lexemes) - 1)::float8 AS dl
                FROM matched AS m,
                     unnest(ts_filter(setweight(setweight(m.lexemes, 'D'), 'A', CAST(:lex AS text[])), '{{a}}')) AS e
            ),
            df AS (SELECT lexeme, count(*)::float8 AS df FROM tf GROUP BY lexeme)
            SELECT tf.id, sum(
                ln(1 + (s.n - df.df + 0.5) / (df.df + 0.5))
                * tf.tf * {BM25_K1 + 1} / (tf.tf + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * tf.dl / s.avgdl))
            ) AS score
            FROM tf JOIN df USING (lexeme) CROSS JOIN stats AS s
            GROUP BY tf.id ORDER BY score DESC, tf.id LIMIT :n
        """

    def neighbours(
        self, tenant: str, user: str, items: list[MemoryItem], max_gap_s: float
    ) -> dict[str, list[MemoryItem]]:
        """The embedded index's rule (memory/lexical.py) on the items table: the item just before and just
        after in the same conversation, else adjacent in time within `max_gap_s`."""
        select = f"SELECT {_NEIGHBOUR_COLUMNS} FROM {self.table} WHERE tenant = :t AND user_id = :u AND id != :id AND "
        out: dict[str, list[MemoryItem]] = {}
        with self.db.read() as conn:
            for item in items:
                found: list[MemoryItem] = []
                for compare, order in (("<", "DESC"), (">", "ASC")):
                    params: dict[str, Any] = {"t": tenant, "u": user, "id": item.id}
                    if item.conversation_id is not None:
                        where = f"conversation_id = :c AND ts {compare}= :ts ORDER BY ts {order} LIMIT 1"
                        params |= {"c": item.conversation_id, "ts": float(item.ts)}
                    else:
                        low, high = (item.ts - max_gap_s, item.ts) if compare == "<" else (item.ts, item.ts + max_gap_s)
                        where = f"ts BETWEEN :low AND :high ORDER BY ts {order} LIMIT 1"
                        params |= {"low": float(low), "high": float(high)}
                    row = conn.execute(sa.text(select + where), params).one_or_none()
                    if row is not None:
                        found.append(
                            MemoryItem(tenant, user, str(row[4]), str(row[3]), float(row[2]), row[1], id=str(row[0]))
                        )
                out[item.id] = sorted(found, key=lambda it: it.ts)
        return out

    def count(self, tenant: str, user: str) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.text(f"SELECT count(*) FROM {self.table} WHERE tenant = :t AND user_id = :u"),
                    {"t": tenant, "u": user},
                ).scalar_one()
            )

    def close(self) -> None:
        return None
