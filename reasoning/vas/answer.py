"""The answer as VAS builds it: text the client may see, held back while it could still start a stop sequence.

OpenAI's `stop` ends the answer before the first occurrence of any stop string, which is not sent. Pieces
arrive a token or a block at a time, so the tail that could still grow into a stop string is held back
until the next piece settles it; the rest goes out at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

Emit = Callable[[str], Awaitable[None]]


def normalise_stop(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop if isinstance(s, str) and s]


class Answer:
    def __init__(self, stop: Sequence[str] = (), emit: Emit | None = None) -> None:
        self.text = ""  # what the base model continues from; after a stop, cut before it
        self.stopped_by_sequence = False
        self._stop = list(stop)
        self._emit = emit
        self._sent = 0

    async def add(self, piece: str) -> bool:
        """Append a piece; True when a stop sequence ended the answer (the text is cut before it)."""
        if self.stopped_by_sequence or not piece:
            return self.stopped_by_sequence
        self.text += piece
        if self._stop:
            # An occurrence cannot start before what was sent: that part never held a stop prefix.
            hits = [i for i in (self.text.find(s, self._sent) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped_by_sequence = True
                await self._send(len(self.text))
                return True
        await self._send(len(self.text) - self._held())
        return False

    async def flush(self) -> None:
        """The answer is over: what was held back is no stop sequence after all."""
        await self._send(len(self.text))

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text) - self._sent), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best

    async def _send(self, upto: int) -> None:
        if upto > self._sent:
            piece = self.text[self._sent : upto]
            self._sent = upto
            if self._emit is not None:
                await self._emit(piece)
