"""Collecting a session PIN from key presses: a pure state machine, no clock inside.

A customer who calls back types the PIN shown in their chat (sessions/model.py
``generate_pin``); the call then joins that session and rings its agent. ``#`` ends an
entry early, ``*`` starts it again; after ``max_tries`` wrong entries the caller is
turned away (the PIN space is small: 10^6 for 6 digits, so guessing must be bounded).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PinComplete:
    """A whole entry to look up."""

    digits: str


@dataclass(frozen=True, slots=True)
class PinExhausted:
    """Too many wrong entries: end the call."""


PinOutcome = PinComplete | PinExhausted | None


@dataclass
class PinCollector:
    length: int = 6
    max_tries: int = 3
    digits: str = ""
    tries: int = 0
    # A lookup is in flight: keys pressed meanwhile are ignored, not queued.
    waiting: bool = field(default=False)

    def press(self, key: str) -> PinOutcome:
        if self.waiting:
            return None
        if key == "*":
            self.digits = ""
            return None
        if key == "#":
            if not self.digits:
                return None
            return self._complete()
        if not key.isdigit():
            return None
        self.digits += key
        if len(self.digits) >= self.length:
            return self._complete()
        return None

    def _complete(self) -> PinComplete:
        entry, self.digits = self.digits, ""
        self.waiting = True
        return PinComplete(entry)

    def rejected(self) -> PinOutcome:
        """The last entry matched no open session."""
        self.waiting = False
        self.tries += 1
        return PinExhausted() if self.tries >= self.max_tries else None
