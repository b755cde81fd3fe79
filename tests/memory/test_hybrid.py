"""Hybrid retrieval (BM25 over SQLite FTS5 fused with dense similarity) and conversation neighbours, on real
Chroma and the real embedding model: a name that dense similarity misses reaches the upstream prompt through a
real Rapport; edits, deletes and forgetting update the lexical rows; tenants and users stay apart; hostile
FTS5 syntax is only ever words; neighbours come within the budget; the per-request options switch it all off."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from memory.items import MemoryItem
from memory.lexical import SqliteLexicalIndex, match_expression, query_terms
from memory.service import MemoryOptions, MemoryService
from tests.memory.conftest import MakeService
from tests.support.helpers import admin, wait_until

TENANT = "tenant-a"
MEMORY_ONLY = ("proxy.stages.memory_plugin:build",)
# Eight turns about accounts, and one about a name: to MiniLM the question below is about accounts (the
# target's cosine to it is 0.20, the best distractor's 0.45), while the name is the one word that matters.
DISTRACTORS = [
    "I need to update the billing address on my account.",
    "What did I mention about the account password reset?",
    "My account settings keep resetting after every login.",
    "I told support about my account being locked yesterday.",
    "Can you remind me what I said about my savings account?",
    "The account dashboard looks different since the update.",
    "I asked the bank to close my old checking account.",
    "My account was charged twice for the same subscription.",
]
TARGET = "Tell Thaddeus the cello needs restringing before the recital."
QUESTION = "What did I say about my account and Thaddeus?"
HOSTILE = [
    '"',
    '""',
    "'",
    "NEAR(a b, 2)",
    "a OR",
    "AND",
    "NOT NOT",
    "*",
    "^start",
    "body: x",
    "owner : anything",
    '" OR 1=1 --',
    "(((((",
    ")",
    "{owner body}: x",
    "col:* AND -x +y",
    "\x00\x01",
    "🙂🙂",
    "Thaddeus* OR \"Thaddeus\"",
    "x" * 5000,
    " ".join(f"w{i}" for i in range(500)),
]


def memory_detail(result: Any) -> dict[str, Any]:
    stage = next(s for s in result.model_extra["rapport"]["stages"] if s["name"] == "memory")
    assert stage["ran"], stage
    detail: dict[str, Any] = stage["detail"]
    return detail


def total(client: httpx.Client, user: str, tenant: str = TENANT) -> int:
    r = client.get(f"/admin/users/{user}/memories", params={"tenant": tenant, "limit": 1})
    return int(r.json()["total"]) if r.status_code == 200 else 0


def say(client: openai.OpenAI, user: str, text: str, conversation: str | None = None) -> None:
    rapport: dict[str, Any] = {"memory": {"k": 0}}
    if conversation is not None:
        rapport["conversation_id"] = conversation
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": text}], user=user, extra_body={"rapport": rapport}
    )


def ask(
    client: openai.OpenAI, upstream: Any, user: str, question: str, **memory: Any
) -> tuple[str, dict[str, Any]]:
    upstream.reset()
    result = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": question}],
        user=user,
        extra_body={"rapport": {"record": False, "memory": memory}},
    )
    sent = upstream.requests[-1].json["messages"]
    system = sent[0]["content"] if sent[0]["role"] == "system" else ""
    return system, memory_detail(result)


@pytest.fixture()
def rapport(make_rapport: Any) -> Any:
    return make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000})


def test_a_name_dense_misses_reaches_the_prompt_with_lexical(rapport: Any, scripted_upstream: Any) -> None:
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    for text in [*DISTRACTORS, TARGET]:
        say(client, "alice", text)
    with admin(rapport) as a:
        wait_until(lambda: total(a, "alice") == len(DISTRACTORS) + 1)

    # k=1: with more, MMR's diversity alone may pick the odd turn out.
    dense, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, lexical=False, neighbours=False)
    assert "Thaddeus" not in dense  # dense alone ranks the account turns first
    assert detail["lexical"] is False and detail["lexical_matches"] == 0 and detail["items"] == 1

    hybrid, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, lexical=True, neighbours=False)
    assert TARGET in hybrid
    assert detail["lexical"] is True and detail["lexical_matches"] >= 1 and detail["items"] == 1

    # The server's default is hybrid: no option needed.
    default, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, neighbours=False)
    assert TARGET in default and detail["lexical"] is True

    # Another user of the tenant, and the same user name in another tenant, get none of alice's words.
    for key, user in ((rapport.api_key, "bob"), (rapport.api_key_b, "alice")):
        other = openai.OpenAI(base_url=rapport.base_url, api_key=key)
        system, detail = ask(other, scripted_upstream, user, QUESTION, k=3)
        assert "Thaddeus" not in system and detail["items"] == 0 and detail["lexical_matches"] == 0


def test_hostile_queries_are_words_not_fts5_syntax(rapport: Any, scripted_upstream: Any) -> None:
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    say(client, "alice", TARGET)
    with admin(rapport) as a:
        wait_until(lambda: total(a, "alice") == 1)
    for query in HOSTILE:
        _, detail = ask(client, scripted_upstream, "alice", query, lexical=True)
        assert detail["lexical"] is True
    _, detail = ask(client, scripted_upstream, "alice", 'Thaddeus" OR owner:* NEAR(', lexical=True)
    assert detail["lexical_matches"] == 1  # the word still matches; the syntax around it does nothing


def test_query_terms_keep_only_words() -> None:
    for query in HOSTILE:
        for term in query_terms(query):
            assert term.isalnum() or "_" in term, term
    assert query_terms('What did "Caroline" research? NEAR(x) AND owner:*') == ["caroline", "research", "near", "owner"]
    expression = match_expression("t", "u", ["near", "and"])
    assert expression.endswith('body : ("near" OR "and")')


def test_index_keeps_tenants_and_users_apart(tmp_path: Any) -> None:
    index = SqliteLexicalIndex(tmp_path / "lexical.sqlite3")
    try:
        items = [
            MemoryItem("t1", "u", "Thaddeus plays the cello"),
            MemoryItem("t1", "v", "Thaddeus plays the cello"),
            MemoryItem("t2", "u", "Thaddeus plays the cello"),
            # A user id that looks like another tenant's key joined up must not reach it either.
            MemoryItem("t1\x00u", "", "Thaddeus plays the cello"),
        ]
        index.add(items)
        for item in items:
            found = index.search(item.tenant, item.user, "thaddeus", 10)
            assert [h.id for h in found] == [item.id]
        assert index.search("t3", "u", "thaddeus", 10) == []
        assert index.delete_user("t1", "u") == 1
        assert index.search("t1", "u", "thaddeus", 10) == []
        assert [h.id for h in index.search("t1", "v", "thaddeus", 10)] == [items[1].id]
        assert [h.id for h in index.search("t2", "u", "thaddeus", 10)] == [items[2].id]
        for query in HOSTILE:
            index.search("t1", "v", query, 5)  # no sqlite3.OperationalError
    finally:
        index.close()


async def test_edit_delete_and_forget_update_the_lexical_rows(make_service: MakeService) -> None:
    service: MemoryService = make_service(summaries=False)
    assert service.lexical is not None
    await service.ingest([MemoryItem("t", "u", text, ts=1000.0 + i) for i, text in enumerate([*DISTRACTORS, TARGET])])
    options = MemoryOptions(k=1, lexical=True, neighbours=False)
    target_id = MemoryItem("t", "u", TARGET).id

    # Edit: the old words stop matching, the new ones match, and the edited item keeps its id.
    await service.edit_item("t", "u", target_id, "Tell Ottoline the cello needs restringing.")
    assert [h.id for h in service.lexical.search("t", "u", "Thaddeus", 5)] == []
    assert [h.id for h in service.lexical.search("t", "u", "Ottoline", 5)] == [target_id]
    found = await service.retrieve("t", "u", "What did I say about my account and Ottoline?", options)
    assert target_id in [it.id for it in found.items]
    found = await service.retrieve("t", "u", QUESTION, options)
    assert target_id not in [it.id for it in found.items]

    # Delete: gone from the index, and no later query brings it back.
    assert await service.delete_item("t", "u", target_id)
    assert service.lexical.search("t", "u", "Ottoline", 5) == []
    found = await service.retrieve("t", "u", "What did I say about my account and Ottoline?", options)
    assert target_id not in [it.id for it in found.items] + [it.id for it in found.neighbours]
    assert target_id not in [h.id for h in service.lexical.search("t", "u", "Ottoline account", 20)]
    assert service.lexical.count("t", "u") == len(DISTRACTORS)

    # Forget: every lexical row of the user goes; another user's stay.
    await service.ingest([MemoryItem("t", "other", "Thaddeus tunes pianos.")])
    await service.userdata.forget("t", "u")
    assert service.lexical.count("t", "u") == 0
    assert service.lexical.search("t", "u", "account", 10) == []
    assert len(service.lexical.search("t", "other", "Thaddeus", 10)) == 1


async def test_a_staged_item_is_searchable_and_deleting_it_leaves_nothing(make_service: MakeService) -> None:
    # A long linger keeps the items in the staging journal for the whole test: not yet in Chroma.
    service: MemoryService = make_service(summaries=False, staged_linger_ms=60_000)
    assert service.lexical is not None
    await service.ingest([MemoryItem("t", "u", text, ts=1000.0 + i) for i, text in enumerate([*DISTRACTORS, TARGET])])
    options = MemoryOptions(k=1, lexical=True, neighbours=False)
    found = await service.retrieve("t", "u", QUESTION, options)
    assert TARGET in [it.text for it in found.items]
    target_id = MemoryItem("t", "u", TARGET).id
    assert await service.delete_item("t", "u", target_id)
    found = await service.retrieve("t", "u", QUESTION, options)
    assert TARGET not in found.block
    assert target_id not in [h.id for h in service.lexical.search("t", "u", QUESTION, 20)]


def test_neighbours_come_within_the_budget(rapport: Any, scripted_upstream: Any) -> None:
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    before = "We talked about what to practise this week."
    after = "Sure, I will pass the message on tomorrow morning."
    for text in [*DISTRACTORS[:3], before, TARGET, after]:
        say(client, "alice", text, conversation="lesson")
    say(client, "alice", "An unrelated note in another chat about groceries.", conversation="other")
    with admin(rapport) as a:
        wait_until(lambda: total(a, "alice") == 7)
    question = "What about Thaddeus?"

    plain, detail = ask(client, scripted_upstream, "alice", question, k=1, neighbours=False)
    assert TARGET in plain and before not in plain and after not in plain and detail["neighbours"] == 0

    system, detail = ask(client, scripted_upstream, "alice", question, k=1, neighbours=True, budget=1000)
    assert detail["items"] == 1 and detail["neighbours"] == 2
    # In conversation order, around the retrieved turn.
    assert system.index(before) < system.index(TARGET) < system.index(after)
    assert "groceries" not in system
    full = detail["tokens_added"]
    assert full <= 1000

    # A budget that holds the retrieved turn but not both neighbours: the block stays within it.
    tight = full - 10
    system, detail = ask(client, scripted_upstream, "alice", question, k=1, neighbours=True, budget=tight)
    assert TARGET in system and detail["tokens_added"] <= tight and detail["neighbours"] == 1

    # Neighbours never push out retrieved items: with k=2 the second item is there whatever the neighbours.
    _, with_nb = ask(client, scripted_upstream, "alice", question, k=2, neighbours=True, budget=tight)
    _, without = ask(client, scripted_upstream, "alice", question, k=2, neighbours=False, budget=tight)
    assert with_nb["item_ids"] == without["item_ids"]


async def test_neighbours_without_a_conversation_are_adjacent_in_time(make_service: MakeService) -> None:
    service: MemoryService = make_service(summaries=False, neighbour_max_gap_s=600)
    texts = ["Earlier that hour I was tuning.", TARGET, "Right after, I went home.", "A week later: groceries."]
    stamps = [1000.0, 1100.0, 1200.0, 1100.0 + 7 * 86400]
    await service.ingest([MemoryItem("t", "u", text, ts=ts) for text, ts in zip(texts, stamps, strict=True)])
    found = await service.retrieve("t", "u", "Thaddeus", MemoryOptions(k=1, neighbours=True, budget=1000))
    assert [it.text for it in found.items] == [TARGET]
    assert sorted(it.text for it in found.neighbours) == sorted(texts[0:1] + texts[2:3])
    # Three weeks' gap is no neighbour; a user's neighbours are the user's own.
    far = await service.retrieve("t", "u", "groceries", MemoryOptions(k=1, neighbours=True, budget=1000))
    assert far.items[0].text == texts[3] and far.neighbours == []
    off = await service.retrieve("t", "u", "Thaddeus", MemoryOptions(k=1, neighbours=False))
    assert off.neighbours == [] and off.details()["neighbours"] == 0


def test_server_settings_switch_both_off(make_rapport: Any, scripted_upstream: Any) -> None:
    h = make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000, "lexical": False, "neighbours": False})
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    for text in [*DISTRACTORS, TARGET]:
        say(client, "alice", text, conversation="c")
    with admin(h) as a:
        wait_until(lambda: total(a, "alice") == len(DISTRACTORS) + 1)
    system, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1)
    assert "Thaddeus" not in system
    assert detail["lexical"] is False and detail["neighbours"] == 0
    # A request can still ask for them.
    system, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, lexical=True, neighbours=True)
    assert TARGET in system and detail["lexical"] is True
