"""Who may register: agents and trunks from config, with their digest secrets."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from ucgate.sip.digest import UserSecret


class AccountKind(enum.Enum):
    AGENT = "agent"
    TRUNK = "trunk"
    APPLICATION = "application"  # may watch presence, never registers calls


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    kind: AccountKind
    secret: UserSecret
    display_name: str | None = None


class AccountDirectory:
    """Lookup by SIP user part. HA1s are computed once at start, never per request."""

    def __init__(self, accounts: Iterable[Account]) -> None:
        self._by_id = {a.id: a for a in accounts}

    def get(self, user: str) -> Account | None:
        return self._by_id.get(user)

    def secret(self, user: str) -> UserSecret | None:
        account = self._by_id.get(user)
        return account.secret if account is not None else None

    def __len__(self) -> int:
        return len(self._by_id)
