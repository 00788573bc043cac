"""Token ids in, text deltas out: incremental detokenization and stop strings.

Byte-level tokenizers split multi-byte characters across tokens, so a delta is
released only once it decodes to whole characters. Text that could be the start
of a stop string is held back until it is known not to be one, so a stop string
never reaches the client, even in pieces.
"""

from collections.abc import Callable, Sequence

__all__ = ["TextStream"]

_REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = []
        # Decoding restarts at `_prefix` so a token's text is read in its context;
        # everything before `_read` has been turned into text already.
        self._prefix = 0
        self._read = 0
        self._stops = tuple(stops)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def push(self, token_ids: Sequence[int]) -> str:
        """Text that can be sent now; once a stop string is seen, nothing more."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        self._pending += self._detokenize(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text, once generation has ended."""
        if self.stopped:
            return ""
        self._pending += self._detokenize(final=True)
        return self._release(final=True)

    def _detokenize(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(before) or (text.endswith(_REPLACEMENT) and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before) :]

    def _release(self, *, final: bool) -> str:
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out = self._pending[: min(hits)]
            self._pending = ""
            self.stopped = True
            return out
        cut = len(self._pending) if final else max(0, len(self._pending) - self._hold)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out
