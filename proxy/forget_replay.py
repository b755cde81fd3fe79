"""`rapport db forget-log` and `rapport db replay-forgets`: keep the forget log across a restore, then replay it.

Replay builds the server's stores exactly as `rapport serve` does (so every part registered in the user-data
registry takes part, whatever plugins are on) without starting workers or taking requests, forgets again every
logged user that a store of the restored database still holds, and closes them. On the embedded default it
takes the data dir's lock like a server: stop the server first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from proxy.settings import RapportSettings
from rapport.core.forget_log import LoggedForget


@dataclass(frozen=True, slots=True)
class ReplayReport:
    logged: int  # forgets in the log at or after `since`
    restored: int  # of those, put back into the database's log from the saved file
    forgotten: list[tuple[str, str]]  # (tenant, user) forgotten again


def log_lines(entries: Iterable[LoggedForget]) -> list[str]:
    return [json.dumps(asdict(entry), sort_keys=True) for entry in entries]


def read_log(path: Path) -> list[LoggedForget]:
    """A saved log (`rapport db forget-log` output): one JSON object per line."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            entries.append(LoggedForget(str(raw["tenant"]), str(raw["user_digest"]), float(raw["forgotten_at"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: line {number} is not a logged forget ({exc.__class__.__name__})") from exc
    return entries


def saved_log(settings: RapportSettings, since: float) -> list[LoggedForget]:
    """The database's forget log from `since` on, read without building any store but the job queue's."""
    from memory.jobs import JobQueue
    from rapport.core.database import Databases

    databases = Databases(settings.database_config())
    try:
        jobs = JobQueue(databases.for_store("jobs"), migrate=settings.database.migrate_on_start)
        return jobs.forget_log.since(since)
    finally:
        databases.close()


def replay(settings: RapportSettings, since: float, saved: list[LoggedForget] | None = None) -> ReplayReport:
    from proxy.app import create_app

    app = create_app(settings)
    services = app.state.services
    jobs = services.jobs

    async def run() -> ReplayReport:
        try:
            restored = 0
            if saved is not None:
                restored = await jobs.db.run(jobs.forget_log.restore, [e for e in saved if e.forgotten_at >= since])
            entries = await jobs.db.run(jobs.forget_log.since, since)
            forgotten = await jobs.replay_forgets(entries)
            return ReplayReport(len(entries), restored, forgotten)
        finally:
            await services.close()

    return asyncio.run(run())
