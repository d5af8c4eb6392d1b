"""Slowing down password guessing: failed logins per client address and per user name.

After a few free failures, each further one makes the address (and the user name) wait longer
before the next try, and past a threshold they are locked out for a while; a try made too early
is answered 429 with Retry-After and not checked at all, so guessing in parallel gains nothing.

A user name's own record holds back only addresses that have failed themselves: someone guessing
the owner's password from elsewhere cannot lock the owner out of a machine that never typed a
wrong password. A success clears the address's record and the user's.

Only user names and addresses are logged, never a password.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

MAX_RECORDS = 10_000  # failed addresses and user names remembered; the oldest go first
NAME_CHARS = 100  # a user name longer than any real one is cut (it still counts as that name)


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5        # failures in a row with no wait
    first_wait_s: float = 1.0     # the wait after the first failure beyond those, doubling...
    max_wait_s: float = 30.0      # ...up to this
    lockout_failures: int = 10    # from this many failures in a row: locked out
    lockout_s: float = 300.0
    forget_after_s: float = 900.0  # a record with no failure for this long starts again from zero

    def wait_after(self, failures: int) -> float:
        """Seconds before the next try is checked, after `failures` failures in a row."""
        if failures >= self.lockout_failures:
            return self.lockout_s
        if failures <= self.free_failures:
            return 0.0
        return min(self.first_wait_s * 2 ** (failures - self.free_failures - 1), self.max_wait_s)


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0


class LoginThrottle:
    """Thread-safe; `clock` is injectable so that the policy can be tested without sleeping."""

    def __init__(self, policy: ThrottlePolicy | None = None, clock: Callable[[], float] = time.monotonic):
        self.policy = policy or ThrottlePolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}  # "addr:<ip>" or "user:<name>", oldest first

    def retry_after(self, address: str, user: str | None) -> int:
        """Whole seconds this address must still wait before a login with `user` is checked
        (0: go ahead)."""
        now = self._clock()
        with self._lock:
            by_address = self._live(_address_key(address), now)
            waits = [by_address.blocked_until - now] if by_address else []
            by_user = self._live(_user_key(user), now) if user is not None else None
            if by_user is not None and by_address is not None and by_address.failures > 0:
                waits.append(by_user.blocked_until - now)
        wait = max(waits, default=0.0)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, address: str, user: str | None, where: str) -> int:
        """Record a failed login; returns the seconds the address must now wait."""
        now = self._clock()
        waits = []
        with self._lock:
            keys = [_address_key(address)] + ([_user_key(user)] if user is not None else [])
            for key in keys:
                record = self._live(key, now) or _Record()
                record.failures += 1
                record.last_failure = now
                wait = self.policy.wait_after(record.failures)
                record.blocked_until = max(record.blocked_until, now + wait)
                self._records.pop(key, None)
                self._records[key] = record  # most recent last
                waits.append((wait, record.failures))
            self._trim(now)
        wait, failures = waits[0]
        shown = (user or "")[:NAME_CHARS]
        if wait >= self.policy.lockout_s:
            log.warning("login: %d failures in a row from %s (last as %r, %s): locked out for %d s",
                        failures, address, shown, where, wait)
        else:
            log.warning("login: failed from %s as %r (%s), %d in a row%s", address, shown, where, failures,
                        f"; next try in {wait:g} s" if wait else "")
        return math.ceil(wait)

    def succeeded(self, address: str, user: str | None) -> None:
        with self._lock:
            self._records.pop(_address_key(address), None)
            if user is not None:
                self._records.pop(_user_key(user), None)

    def _live(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now - record.last_failure > self.policy.forget_after_s \
                and now >= record.blocked_until:
            del self._records[key]
            return None
        return record

    def _trim(self, now: float) -> None:
        if len(self._records) <= MAX_RECORDS:
            return
        for key in [k for k, r in self._records.items()
                    if now - r.last_failure > self.policy.forget_after_s and now >= r.blocked_until]:
            del self._records[key]
        while len(self._records) > MAX_RECORDS:
            del self._records[next(iter(self._records))]


def _address_key(address: str) -> str:
    return "addr:" + address


def _user_key(user: str) -> str:
    return "user:" + user.strip()[:NAME_CHARS]


def too_many_message(seconds: int) -> str:
    return f"Too many failed login attempts: wait {seconds} s before trying again"
