"""A replica in its own process for the lease tests: runs jobs of kind "work" until killed.

`python -m tests.storage.job_worker URL LEASE_S`: the handler says `started <id>`, waits for a line on stdin,
then writes its result row and the job's success in one transaction under its lease. When the lease is
gone (taken over or deleted) it says `lost <id>` and writes nothing.
"""

from __future__ import annotations

import asyncio
import sys

from memory.jobs import Job, JobCancelled, JobQueue, Progress
from rapport.core.database import Database
from tests.storage.results import record_result

REPLICA = "replica-b"


async def main(url: str, lease_s: float) -> None:
    db = Database.open(url)
    queue = JobQueue(db, lease_s=lease_s, poll_interval_s=0.05, replica_id=REPLICA)

    async def work(job: Job, progress: Progress) -> None:
        print(f"started {job.id}", flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            await progress.complete(lambda conn: record_result(conn, job.id, REPLICA))
            print(f"wrote {job.id}", flush=True)
        except (JobCancelled, asyncio.CancelledError):
            print(f"lost {job.id}", flush=True)
            raise

    queue.register("work", work)
    await queue.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
