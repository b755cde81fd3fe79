"""`rapport db migrate --from DATA_DIR`: copy an embedded data dir (SQLite files + embedded Chroma) into the
shared PostgreSQL database that `database_url` names.

- tables.py: the SQL stores (keys, catalog, pending jobs, RPM, VAS, stored responses), row by row with their
  primary keys, insert-if-absent; the forget log by its content (tenant, user digest, time), so forgets
  logged before the move can still be replayed after a restore;
- vectors.py: memory items with the vectors Chroma holds (never re-embedded), after the staging journal is
  flushed into Chroma;
- run.py: the order, the progress bars, the check of every source row in the target, the data-dir lock.

It lives in `proxy/` because it reaches every package's stores (`memory` and `reasoning` never import `proxy`).
"""
