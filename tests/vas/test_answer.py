"""Stop sequences on an answer built piece by piece: cut before the first stop, nothing of it ever sent."""

from __future__ import annotations

import pytest

from reasoning.vas.answer import Answer, normalise_stop


async def _run(pieces: list[str], stop: list[str]) -> tuple[str, list[str], bool]:
    sent: list[str] = []

    async def emit(piece: str) -> None:
        sent.append(piece)

    answer = Answer(stop, emit)
    hit = False
    for piece in pieces:
        if await answer.add(piece):
            hit = True
            break
    await answer.flush()
    return answer.text, sent, hit


@pytest.mark.parametrize(
    ("pieces", "stop", "text", "sent", "hit"),
    [
        (["Hello", " wor", "ld and more"], ["world"], "Hello ", ["Hello", " "], True),
        (["a", "a", "b"], ["ab"], "a", ["a"], True),  # overlapping start: the first "a" was no stop prefix
        (["Hello", " wor", "m"], ["world"], "Hello worm", ["Hello", " ", "worm"], False),  # held, then released
        (["x", "END"], ["zz", "END"], "x", ["x"], True),
        (["one two"], [], "one two", ["one two"], False),
        (["你好", "🙂。"], ["。"], "你好🙂", ["你好", "🙂"], True),
    ],
)
async def test_stop_cuts_and_holds_back(pieces: list[str], stop: list[str], text: str, sent: list[str],
                                        hit: bool) -> None:
    assert await _run(pieces, stop) == (text, sent, hit)


def test_stop_forms() -> None:
    assert normalise_stop(None) == [] and normalise_stop("") == [] and normalise_stop("x") == ["x"]
    assert normalise_stop(["a", ""]) == ["a"]
