"""The per-process revocation set (pure: no I/O, time from an injected clock).

Holds what every committed revocation up to ``applied_seq`` says, as plain
dicts so a check is a few lookups. Revocations are joins (set union; the
latest ``not_before`` per user), so applying them in any order gives the same
set; ``applied_seq`` is what needs the order, and :meth:`offer` keeps it a
prefix: an event past a gap waits in ``pending`` until the gap is filled by
an event or by a catch-up from the store (:meth:`load`).

Thread-safety: one writer at a time (the client's listener thread; writes
take ``_lock``), any number of readers without a lock: a check reads single
dict entries and attributes, which are atomic under the GIL.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson

from .compact import HashedExpirySet
from .events import Revocation
from .tokens import Session

MAX_PENDING = 10_000
"""Out-of-order events held back at most; beyond that only a catch-up helps."""


class RevocationCache:
    """In-memory revocation state and its sequence bookkeeping."""

    def __init__(self, *, leeway: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self._leeway = leeway
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = HashedExpirySet()
        self._sessions = HashedExpirySet()
        self._users: dict[str, tuple[float, float]] = {}
        self._everyone: tuple[float, float] | None = None
        self._user_expiries: list[tuple[float, str]] = []
        self._pending: dict[int, Revocation] = {}
        self.applied_seq = 0
        """Every event with ``seq <= applied_seq`` is applied."""
        self.known_head = 0
        """The highest committed seq this cache has heard of (heartbeats, events)."""
        self.generation = 0
        """Grows after every change that can revoke more. A check made at
        generation g (read before the check) still holds while it is g."""

    @property
    def size(self) -> int:
        """Active entries (expired ones count until the next :meth:`sweep`)."""
        return (
            len(self._tokens)
            + len(self._sessions)
            + len(self._users)
            + (self._everyone is not None)
        )

    @property
    def complete(self) -> bool:
        """True when nothing this cache has heard of is missing."""
        return self.applied_seq >= self.known_head

    def check(self, session: Session, now: float | None = None) -> str | None:
        """The kind of revocation that covers ``session`` at ``now``, or ``None``."""
        if now is None:
            now = self._clock()
        until = self._tokens.get(session.jti)
        if until is not None and now < until:
            return "token"
        if session.session_handle is not None:
            until = self._sessions.get(session.session_handle)
            if until is not None and now < until:
                return "session"
        user = self._users.get(session.user_id)
        if user is not None and session.issued_at < user[0] and now < user[1]:
            return "user"
        everyone = self._everyone
        if everyone is not None and session.issued_at < everyone[0] and now < everyone[1]:
            return "all"
        return None

    def note_head(self, head: int) -> None:
        """A heartbeat said the store's committed head is ``head``."""
        self.known_head = max(self.known_head, head)

    def offer(self, revocation: Revocation) -> bool:
        """Take one relayed event; apply it and what it unblocks, in seq order.

        Returns False when it was a duplicate (``seq <= applied_seq``).
        """
        seq = revocation.seq
        if seq <= self.applied_seq or seq in self._pending:
            return False
        self.known_head = max(self.known_head, seq)
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                self._pending[seq] = revocation
            self._drain_pending()
        return True

    def load(self, revocations: Iterable[Revocation], head: int) -> None:
        """Apply a catch-up from the store: every live record in ``(applied_seq, head]``.

        Records purged from the store had expired, so the set is complete up to ``head``.
        """
        with self._lock:
            for revocation in revocations:
                self._apply(revocation)
            self.applied_seq = max(self.applied_seq, head)
            self.known_head = max(self.known_head, head)
            for seq in [s for s in self._pending if s <= self.applied_seq]:
                del self._pending[seq]
            self._drain_pending()

    def load_raw(self, pages: Iterable[list[bytes]], head: int) -> None:
        """:meth:`load` for records as the store holds them (trusted JSON), page by page.

        The bulk path of a cold start: one JSON parse per page, subjects hashed
        page by page (so only hashes outlive a page), and one merge per kind at
        the end; no model per record.
        """
        leeway = self._leeway
        hashed: dict[str, list[tuple[Any, Any]]] = {"token": [], "session": []}
        others: list[Revocation] = []
        for records in pages:
            subjects: dict[str, list[str]] = {"token": [], "session": []}
            untils: dict[str, list[float]] = {"token": [], "session": []}
            for record in orjson.loads(b"[" + b",".join(records) + b"]"):
                kind = record["kind"]
                if kind in subjects:
                    subjects[kind].append(record["subject"])
                    untils[kind].append(record["expires_at"] + leeway)
                else:
                    others.append(Revocation.model_validate(record))
            for kind, names in subjects.items():
                if names:
                    hashed[kind].append(HashedExpirySet.hashed(names, untils[kind]))
        with self._lock:
            added = 0
            for kind, table in (("token", self._tokens), ("session", self._sessions)):
                if hashed[kind]:
                    added += table.add_hashed(
                        np.concatenate([keys for keys, _ in hashed[kind]]),
                        np.concatenate([expiries for _, expiries in hashed[kind]]),
                    )
            if added:
                self.generation += 1
        self.load(others, head)

    def rebase(self, head: int) -> None:
        """The store's head went back to ``head`` (a failover lost writes, or a
        replica further behind): follow the store's seqs from there.

        What was applied stays applied (revocations only ever add); seqs after
        ``head`` will be reused by new commits, so they must apply again.
        """
        with self._lock:
            self.applied_seq = min(self.applied_seq, head)
            self.known_head = min(self.known_head, head)
            self._pending.clear()

    def sweep(self) -> int:
        """Drop entries that can no longer match a valid token; returns how many."""
        now = self._clock()
        with self._lock:
            dropped = self._tokens.sweep(now) + self._sessions.sweep(now)
            while self._user_expiries and self._user_expiries[0][0] <= now:
                _, subject = heapq.heappop(self._user_expiries)
                entry = self._users.get(subject)
                if entry is not None and entry[1] <= now:
                    del self._users[subject]
                    dropped += 1
            if self._everyone is not None and self._everyone[1] <= now:
                self._everyone = None
                dropped += 1
        return dropped

    def _drain_pending(self) -> None:
        while (revocation := self._pending.pop(self.applied_seq + 1, None)) is not None:
            self._apply(revocation)
            self.applied_seq = revocation.seq

    def _apply(self, revocation: Revocation) -> None:
        until = revocation.expires_at + self._leeway
        kind, subject = revocation.kind, revocation.subject
        if kind == "token":
            if not self._tokens.add(subject, until):
                return
        elif kind == "session":
            if not self._sessions.add(subject, until):
                return
        else:
            assert revocation.not_before is not None
            current = self._users.get(subject) if kind == "user" else self._everyone
            entry = (revocation.not_before, until)
            if current is not None:
                entry = (max(current[0], entry[0]), max(current[1], entry[1]))
                if entry == current:
                    return
            if kind == "user":
                self._users[subject] = entry
                heapq.heappush(self._user_expiries, (entry[1], subject))
            else:
                self._everyone = entry
        self.generation += 1
