"""RPM learns from the user: their feedback on a response Rapport gave them becomes a labelled history entry.

RPM's method learns from a person's own responses to inputs. A chat's answer is the model's, not the user's, so
it is not history (rpm.learn_from_model_answers stays off by default); what the user says about it is:
- a correction ("the answer I wanted is ..."): the user's own response to their query, so the entry is
  (query, correction), under the response's task label;
- a choice (the option they picked: "B", "the vegan place"): likewise (query, choice);
- a rating (a number): a judgement of the answer, so the entry's input is the query together with the answer
  it judges and its response is the number, under the task "rating", the label rating imports use. Without the
  answer the entry would claim the user rates the query itself.
A rating may come with a correction or a choice (a thumbs-down and what they wanted: two entries); a correction
and a choice together are two answers to the same input, and are refused.

What a feedback needs (the query and the answer) is remembered per response for named users whose request RPM
ran on (feedback_store.py), off the request path, bounded by a retention and a per-user cap.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from memory.llm import cap_text
from reasoning.rpm.config import FeedbackSettings
from reasoning.rpm.feedback_store import AppliedFeedback, FeedbackStore, IssuedResponse
from reasoning.rpm.models import HistoryItem

# The task label of rating entries: the one labelled rating imports carry (RPM's `task` option filters on it).
RATING_TASK = "rating"
# How much of the rated answer a rating entry's input keeps: enough to say what was judged, while the query,
# which a later similar query is matched against, stays the larger part.
RATED_ANSWER_CHARS = 600
# The longest response id remembered (an upstream's ids are short; a longer one is not a response id).
MAX_RESPONSE_ID = 200


class Feedback(BaseModel):
    """What the user says about one response: at least one of rating, choice, correction."""

    model_config = ConfigDict(extra="forbid")

    rating: float | None = Field(default=None, ge=-1e6, le=1e6, allow_inf_nan=False)
    choice: str | None = Field(default=None, min_length=1, max_length=200)
    correction: str | None = Field(default=None, min_length=1, max_length=20_000)


class FeedbackError(ValueError):
    """A feedback that says nothing, or contradicts itself; `param` names the field to fix."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def check(feedback: Feedback) -> None:
    if feedback.rating is None and not (feedback.choice or "").strip() and not (feedback.correction or "").strip():
        raise FeedbackError("Give at least one of 'rating', 'choice' or 'correction'.", param="rating")
    if feedback.choice is not None and feedback.correction is not None:
        raise FeedbackError(
            "Give a 'choice' or a 'correction', not both: each is the user's answer to the same input.",
            param="choice",
        )


def rating_text(rating: float) -> str:
    # "4", not "4.0": numeric responses are read back by reasoning/rpm/factors.py's response_number.
    return f"{rating:g}"


def rated_input(issued: IssuedResponse) -> str:
    answer, _ = cap_text(issued.answer.strip(), RATED_ANSWER_CHARS, at_word=True)
    return f"{issued.input}\nAnswer rated: {answer}" if answer else issued.input


def history_items(issued: IssuedResponse, feedback: Feedback) -> list[HistoryItem]:
    """The history entries a feedback becomes (see the module's docstring for why each looks as it does)."""
    check(feedback)
    items: list[HistoryItem] = []
    answer = (feedback.correction or feedback.choice or "").strip()
    if answer:
        items.append(HistoryItem(input=issued.input, response=answer, task=issued.task))
    if feedback.rating is not None:
        items.append(HistoryItem(input=rated_input(issued), response=rating_text(feedback.rating), task=RATING_TASK))
    return items


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    response_id: str
    entry_ids: list[int]
    replaced: int


class FeedbackBook:
    """The async front of feedback: remember issued responses, turn feedback on one into history."""

    def __init__(self, settings: FeedbackSettings, store: FeedbackStore) -> None:
        self.settings = settings
        self.store = store

    async def generation(self, tenant: str, user: str) -> int | None:
        """The user's forget generation, read as a request starts (None with feedback off: nothing to guard)."""
        if not self.settings.enabled:
            return None
        return await asyncio.to_thread(self.store.generation, tenant, user)

    async def remember(
        self, tenant: str, user: str, response_id: str, text: str, answer: str, task: str | None,
        generation: int | None = None,
    ) -> bool:
        """Keep a response for feedback; False when there is nothing to keep (feedback off, no query text) or
        the user was forgotten since `generation` (read when the request started) was read."""
        text = text.strip()
        if not self.settings.enabled or not text or not 0 < len(response_id) <= MAX_RESPONSE_ID:
            return False
        limit = self.settings.max_chars
        text, _ = cap_text(text, limit)
        answer, _ = cap_text(answer.strip(), limit)
        return await asyncio.to_thread(
            functools.partial(self.store.remember, tenant, user, response_id, text, answer, task, generation=generation)
        )

    async def give(self, tenant: str, user: str, response_id: str, feedback: Feedback) -> FeedbackResult | None:
        """Write the feedback into the user's history (replacing an earlier one on the same response);
        None when the response is unknown to this user (another user's, expired, or never remembered)."""
        check(feedback)
        if not self.settings.enabled:
            return None
        issued = await asyncio.to_thread(self.store.issued, tenant, user, response_id)
        if issued is None:
            return None
        rows = [(i.input, i.response, i.task) for i in history_items(issued, feedback)]
        body = feedback.model_dump(exclude_none=True)
        applied: AppliedFeedback | None = await asyncio.to_thread(
            self.store.apply, tenant, user, issued, rows, body
        )
        if applied is None:  # forgotten or purged between the read and the write
            return None
        return FeedbackResult(response_id, applied.entry_ids, applied.replaced)
