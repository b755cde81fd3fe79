"""Offline rewards computed from the text alone: conciseness, readability, sentiment, formality."""

from __future__ import annotations

import math
import re

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def count_syllables(word: str) -> int:
    """Vowel-group heuristic: each run of vowels is a syllable, a silent final 'e' is not."""
    w = word.lower()
    if not w:
        return 0
    groups = re.findall(r"[aeiouy]+", w)
    n = len(groups)
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and n > 1:
        n -= 1
    if w.endswith(("ed", "es")) and n > 1 and not w.endswith(("ted", "ded", "ses", "zes", "ces", "ges")):
        n -= 1
    return max(1, n)


def grade_level(text: str) -> float:
    """Flesch-Kincaid grade level with our own syllable counter (0 for empty text)."""
    ws = words(text)
    if not ws:
        return 0.0
    sentences = max(1, len(_SENTENCE_END.findall(text.strip() + " ")))
    syllables = sum(count_syllables(w) for w in ws)
    return 0.39 * len(ws) / sentences + 11.8 * syllables / len(ws) - 15.59


class ConcisenessReward:
    """Closer to a target length in words is better: -|n - target| / target, so 0 is perfect."""

    name = "conciseness"

    def __init__(self, target_words: int = 20) -> None:
        if target_words < 1:
            raise ValueError("target_words must be at least 1")
        self.target_words = target_words

    def score(self, prompt: str, response: str) -> float:
        n = len(words(response))
        return -abs(n - self.target_words) / self.target_words


class ReadabilityReward:
    """Easier text is better: minus the distance of the grade level above a target grade (0 at or below)."""

    name = "readability"

    def __init__(self, target_grade: float = 6.0) -> None:
        self.target_grade = target_grade

    def score(self, prompt: str, response: str) -> float:
        if not words(response):
            return -1.0
        return -max(0.0, grade_level(response) - self.target_grade) / 10.0


_POSITIVE = frozenset(
    """good great excellent wonderful amazing happy glad love lovely nice best better beautiful
    brilliant awesome fantastic delightful enjoy enjoyed enjoying fun joy joyful pleasant positive
    perfect success successful win winning warm kind friendly helpful hope hopeful bright calm
    cheerful excited exciting grateful thanks thank welcome fortunate superb terrific admire
    appreciate comfortable charming fresh healthy peaceful proud smile sunny sweet treasure
    wonderfully beautifully easy favorite safe strong support care caring gentle laugh""".split()
)
_NEGATIVE = frozenset(
    """bad terrible awful horrible sad angry hate hated worst worse ugly poor pain painful fail
    failed failure wrong cry crying fear afraid scared sick ill hurt broken loss lost lose losing
    miserable unhappy annoying annoyed boring dull dirty dangerous death dead die disaster
    disappointing disappointed dreadful gloomy grief guilty harsh hostile lonely nasty negative
    problem problems stress stressful tragic tragedy upset weak worry worried cold cruel damage
    unfortunately sorry mistake difficult hard dark""".split()
)
_NEGATORS = frozenset("not no never none nobody nothing neither nor isn't wasn't don't doesn't didn't can't won't".split())


class SentimentReward:
    """Lexicon sentiment in [-1, 1]: (pos - neg) / (pos + neg + 1), a negator flips the next word."""

    name = "sentiment"

    def score(self, prompt: str, response: str) -> float:
        pos = neg = 0
        negate = False
        for w in (x.lower() for x in words(response)):
            if w in _NEGATORS:
                negate = True
                continue
            if w in _POSITIVE:
                pos, neg = (pos, neg + 1) if negate else (pos + 1, neg)
            elif w in _NEGATIVE:
                pos, neg = (pos + 1, neg) if negate else (pos, neg + 1)
            negate = False
        return (pos - neg) / (pos + neg + 1)


_INFORMAL = frozenset(
    """hey hi hiya yeah yep nope gonna wanna gotta kinda sorta lol omg btw cool awesome dude guys
    stuff okay ok ya yo wow haha cuz ain't y'all folks super totally""".split()
)
_FORMAL = frozenset(
    """therefore however furthermore moreover consequently regarding accordingly additionally
    nevertheless thus hence whereas respectfully sincerely kindly please shall pursuant
    subsequently approximately assist request require provide ensure indicate demonstrate""".split()
)


class FormalityReward:
    """Formality in about [-1, 1]: formal markers and long words up, slang, contractions and '!' down."""

    name = "formality"

    def score(self, prompt: str, response: str) -> float:
        ws = [w.lower() for w in words(response)]
        if not ws:
            return 0.0
        n = len(ws)
        formal = sum(w in _FORMAL for w in ws) + sum(len(w) >= 9 for w in ws) * 0.5
        informal = sum(w in _INFORMAL for w in ws) + sum("'" in w for w in ws) + response.count("!")
        return math.tanh(3.0 * (formal - informal) / n)
