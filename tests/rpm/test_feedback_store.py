"""Issued responses and feedback entries in RPM's store, on both backends: scoped by tenant and user, one
feedback per response (a second replaces the first in the history), bounded by a per-user cap and a
retention, and removed by the user's forget."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from reasoning.rpm.config import FeedbackSettings
from reasoning.rpm.feedback import Feedback, FeedbackBook
from reasoning.rpm.feedback_store import FeedbackStore
from reasoning.rpm.models import Feature
from reasoning.rpm.store import RPMStore
from reasoning.rpm.store_schema import TABLES
from tests.support.helpers import wait_until
from tests.support.postgres import Backend

DAY = 86400.0


def issued_rows(store: RPMStore) -> int:
    table = TABLES[store.db.dialect].issued
    with store.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def open_stores(storage: Backend, **settings: float) -> tuple[RPMStore, FeedbackStore]:
    store = RPMStore(storage.open())
    options = {"retention_s": 30 * DAY, "max_per_user": 1000, **settings}
    return store, FeedbackStore(store, retention_s=options["retention_s"], max_per_user=int(options["max_per_user"]))


def test_feedback_is_scoped_and_replaces_the_earlier_one(storage: Backend) -> None:
    store, feedback = open_stores(storage)
    feedback.remember("t", "alice", "chatcmpl-1", "Suggest a dinner place.", "Try Steak House.", "food")
    assert feedback.issued("t", "bob", "chatcmpl-1") is None
    assert feedback.issued("other", "alice", "chatcmpl-1") is None
    issued = feedback.issued("t", "alice", "chatcmpl-1")
    assert issued is not None and issued.input == "Suggest a dinner place." and issued.answer == "Try Steak House."

    first = feedback.apply("t", "alice", issued, [("Suggest a dinner place.", "Green Leaf, vegan", "food")], {"correction": "x"})
    assert first is not None and first.replaced == 0 and len(first.entry_ids) == 1
    # The first entry gets built (features and a path), then a second feedback replaces it with everything derived.
    entry_id = first.entry_ids[0]
    store.add_features("t", "alice", entry_id, [Feature(name="cuisine", value="vegan")], "cheap",
                       np.ones((1, 3), dtype=np.float32), np.ones((1, 3), dtype=np.float32))
    store.set_path("t", "alice", entry_id, "vegan, always", "template", None)
    second = feedback.apply("t", "alice", issued, [("Suggest a dinner place.", "Pearl, vegan", "food"),
                                                   ("Suggest a dinner place.\nAnswer rated: Try Steak House.", "1", "rating")],
                            {"correction": "y", "rating": 1})
    assert second is not None and second.replaced == 1 and len(second.entry_ids) == 2
    history = store.entries("t", "alice")
    assert sorted(e.response for e in history) == ["1", "Pearl, vegan"]
    assert {e.source for e in history} == {issued.source}
    assert store.features("t", "alice") == [] and store.paths("t", "alice") == []
    assert feedback.issued("t", "alice", "chatcmpl-1").feedback == {"correction": "y", "rating": 1}  # type: ignore[union-attr]
    # Nobody else can apply feedback to it.
    assert feedback.apply("t", "bob", issued, [("q", "a", None)], {}) is None
    assert store.entries("t", "bob") == []


def test_an_id_issued_again_is_a_new_response(storage: Backend) -> None:
    store, feedback = open_stores(storage)
    feedback.remember("t", "u", "chatcmpl-same", "first question", "first answer", None)
    old = feedback.issued("t", "u", "chatcmpl-same")
    assert old is not None
    assert feedback.apply("t", "u", old, [("first question", "mine", None)], {"choice": "mine"}) is not None
    # An upstream that repeats ids: the second answer is its own response, with no feedback yet...
    feedback.remember("t", "u", "chatcmpl-same", "second question", "second answer", None)
    new = feedback.issued("t", "u", "chatcmpl-same")
    assert new is not None and new.key != old.key and new.feedback is None
    # ...a feedback read for the first one no longer applies, and one on the second leaves the first's entry.
    assert feedback.apply("t", "u", old, [("first question", "again", None)], {}) is None
    assert feedback.apply("t", "u", new, [("second question", "theirs", None)], {}) is not None
    assert sorted(e.response for e in store.entries("t", "u")) == ["mine", "theirs"]


def test_issued_responses_are_capped_per_user_and_expire(storage: Backend) -> None:
    store, feedback = open_stores(storage, max_per_user=3)
    now = time.time()
    for n in range(5):
        feedback.remember("t", "u", f"r{n}", f"q{n}", f"a{n}", None, created_at=now + n)
    feedback.remember("t", "other", "r0", "q", "a", None)
    assert feedback.count("t", "u") == 3
    assert feedback.issued("t", "u", "r1") is None and feedback.issued("t", "u", "r4") is not None
    assert feedback.count("t", "other") == 1, "another user's cap is their own"

    # Written under a 30-day retention an hour ago; a store with a minute's retention no longer finds it.
    feedback.remember("t", "v", "old", "q", "a", None, created_at=now - 3600)
    _, short = open_stores(storage, retention_s=60.0)
    assert feedback.issued("t", "v", "old") is not None
    assert short.issued("t", "v", "old") is None, "past the retention it is not found"
    before = issued_rows(store)
    short.remember("t", "v", "new", "q", "a", None)
    assert issued_rows(store) == before, "the expired row is purged as a new one is written"
    assert feedback.issued("t", "v", "old") is None


def test_forget_removes_issued_responses_and_feedback_entries(storage: Backend) -> None:
    store, feedback = open_stores(storage)
    for user in ("alice", "bob"):
        feedback.remember("t", user, "chatcmpl-1", "q", "a", None)
        issued = feedback.issued("t", user, "chatcmpl-1")
        assert issued is not None
        feedback.apply("t", user, issued, [("q", "mine", None)], {"choice": "mine"})
    assert store.forget_user("t", "alice") == 1
    assert feedback.issued("t", "alice", "chatcmpl-1") is None and store.entries("t", "alice") == []
    assert feedback.count("t", "alice") == 0
    assert feedback.issued("t", "bob", "chatcmpl-1") is not None and len(store.entries("t", "bob")) == 1


async def test_feedback_book_turns_each_signal_into_history(storage: Backend) -> None:
    store, feedback = open_stores(storage)
    book = FeedbackBook(FeedbackSettings(max_chars=100), feedback)
    assert await book.remember("t", "u", "resp_1", "  Where should we eat?  ", "Try " + "x" * 500, "food")
    assert not await book.remember("t", "u", "resp_2", "   ", "an image-only turn has no query", None)
    issued = feedback.issued("t", "u", "resp_1")
    assert issued is not None and issued.input == "Where should we eat?" and len(issued.answer) == 100

    result = await book.give("t", "u", "resp_1", Feedback(rating=4, correction="The vegan place."))
    assert result is not None and len(result.entry_ids) == 2
    entries = {e.task: e for e in store.entries("t", "u")}
    assert entries["food"].input == "Where should we eat?" and entries["food"].response == "The vegan place."
    assert entries["rating"].response == "4" and entries["rating"].input.startswith("Where should we eat?\nAnswer rated: Try")
    assert await book.give("t", "someone-else", "resp_1", Feedback(rating=1)) is None
    assert await book.give("t", "u", "resp_2", Feedback(rating=1)) is None


def test_a_response_remembered_for_a_request_begun_before_a_forget_is_not_written(storage: Backend) -> None:
    store, feedback = open_stores(storage)
    started = feedback.generation("t", "u")  # as the request starts
    assert started == 0
    feedback.remember("t", "u", "chatcmpl-before", "q", "a", None, generation=started)
    store.forget_user("t", "u")  # lands while the next answer is on its way
    assert not feedback.remember("t", "u", "chatcmpl-racing", "my PIN is 4821", "noted", None, generation=started)
    assert feedback.count("t", "u") == 0 and feedback.issued("t", "u", "chatcmpl-racing") is None
    # A request begun after the forget is remembered again, and another user never waited on this one's forget.
    assert feedback.remember("t", "u", "chatcmpl-after", "q", "a", None, generation=feedback.generation("t", "u"))
    assert feedback.remember("t", "v", "chatcmpl-v", "q", "a", None, generation=0)
    assert feedback.count("t", "u") == 1 and feedback.count("t", "v") == 1


def test_on_postgres_a_remember_waits_for_a_forget_in_flight(storage: Backend) -> None:
    if storage.name != "postgres":
        pytest.skip("SQLite serializes every write transaction on the file's write lock")
    store, feedback = open_stores(storage)
    started = feedback.generation("t", "u")
    watcher = storage.open()
    result: list[bool] = []
    with store.db.write() as conn:
        # The forget's first step, not yet committed: the user's generation row is being inserted.
        store._bump_generation(conn, "t", "u")
        racing = threading.Thread(
            target=lambda: result.append(feedback.remember("t", "u", "chatcmpl-racing", "q", "a", None, generation=started))
        )
        racing.start()

        def waiting() -> bool:
            with watcher.read() as w:
                query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                return int(w.exec_driver_sql(query).scalar_one()) > 0

        wait_until(waiting, within=30)
    racing.join(30)
    assert result == [False] and feedback.count("t", "u") == 0


async def test_feedback_off_remembers_nothing_and_finds_nothing(storage: Backend) -> None:
    _, feedback = open_stores(storage)
    feedback.remember("t", "u", "resp_1", "q", "a", None)  # remembered while it was on
    off = FeedbackBook(FeedbackSettings(enabled=False), feedback)
    assert await off.generation("t", "u") is None
    assert not await off.remember("t", "u", "resp_2", "q", "a", None)
    assert feedback.issued("t", "u", "resp_2") is None
    assert await off.give("t", "u", "resp_1", Feedback(rating=3)) is None
