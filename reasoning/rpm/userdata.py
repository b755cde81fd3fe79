"""RPM's part of the user-data registry (rapport/core/userdata.py): every table of RPM's store.

The tables are read from `RPMTables` itself, so a table added there (feedback, say) is exported, imported,
and checked by the registry's isolation test with no change here; its forget is the store's `forget_user`,
which must delete it too (the isolation test fails if it does not). Ids are renumbered on import and the
`<singular>_id` columns that point at them (`entry_id`, `factor_id`) follow (see `TablesPart`).
"""

from __future__ import annotations

import dataclasses

from rapport.core.userdata import Counts, TablesPart
from reasoning.rpm.engine import RPMEngine
from reasoning.rpm.store_schema import TABLES


def rpm_part(engine: RPMEngine) -> TablesPart:
    store = engine.store
    tables = TABLES[store.db.dialect]

    async def forget(tenant: str, user: str) -> Counts:
        # Through the engine: under its per-user lock, so a build running in this process stops first.
        return {"entries": await engine.forget(tenant, user)}

    return TablesPart(
        "rpm",
        store.db,
        {f.name: getattr(tables, f.name) for f in dataclasses.fields(tables)},
        forget=forget,
    )
