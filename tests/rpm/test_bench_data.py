"""The RPM bench's generator: seeded, and each user's ratings follow their hidden two-attribute rule."""

from __future__ import annotations

from bench.rpm_eval import User, make_users, parse_rating, rating


def test_generator_is_seeded_and_follows_the_rule() -> None:
    a, b = make_users(3, 2, 6, 2), make_users(3, 2, 6, 2)
    assert [u.history for u in a] == [u.history for u in b]
    assert make_users(4, 2, 6, 2)[0].history != a[0].history
    for user in a:
        assert len(user.history) == 6 and len(user.queries) == 2
        for item in user.history:
            genre = item.input.split("Genre: ")[1].split(".")[0]
            length = item.input.split("Length: ")[1].split(".")[0]
            assert int(item.response) == rating(user, genre, length)


def test_rule_uses_two_attributes() -> None:
    user = User("u", liked="comedy", disliked="horror", length="short")
    assert rating(user, "comedy", "short") == 5 and rating(user, "comedy", "long") == 5
    assert rating(user, "horror", "long") == 1 and rating(user, "horror", "short") == 2
    assert rating(user, "drama", "short") == 4 and rating(user, "drama", "long") == 3


def test_parse_rating_prefers_the_answer_after_the_reasoning() -> None:
    assert parse_rating("<reasoning>5 stars for comedy, 1 for horror</reasoning>\nRating: 2") == 2
    assert parse_rating("I would give it 4 out of 5.") == 4
    assert parse_rating("no idea") is None


def test_parse_rating_ignores_list_numbers_scales_and_cut_reasoning() -> None:
    # Replies SmolLM2-135M actually gave: a list marker before the rating, a rating echoed from examples.
    assert parse_rating("1. 5\nThe movie is rated as a 5 out of 10 based on the overall rating system.") == 5
    assert parse_rating("This person answered: 2") == 2
    assert parse_rating("Rating: 4/5") == 4
    assert parse_rating("I'd rate it a 2 on the 1-5 scale.") == 2
    # Free-running reasoning cut by max_tokens: its numbers (list items, averages) are not a rating.
    assert parse_rating("To determine how to rate this movie:\n1. Title: x\n2. average response 3.5") is None
    assert parse_rating("<reasoning>genre drama averages 5, so") is None
    assert parse_rating("From 1 to 5, hard to say.") is None
    assert parse_rating("Released in 2017, a 10 minute film.") is None
