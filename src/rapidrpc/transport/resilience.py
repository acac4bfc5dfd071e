"""Client resilience policies: reconnect backoff, retry budget, retry policy.

Pure bookkeeping, no sockets and no threads of its own, so every client driver (blocking
and asyncio) can share it.  Random source, clock and sleep are injectable so tests are
deterministic and never sleep for real.

* :class:`Backoff` spaces reconnect attempts after failures (HOSTILE 33): exponential with
  jitter, grpc-go's defaults (1 s x1.6 +-20 %, capped at 120 s).
* :class:`RetryBudget` is a shared token bucket (gRPC retry throttling, Finagle's retry
  budget): many callers of one failing server cannot multiply its load (HOSTILE 34).
* :class:`RetryPolicy` describes retries of *idempotent* calls (gRPC proposal A6 defaults);
  :func:`call_with_retries` runs one call under it, all attempts sharing one deadline.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from rapidrpc.errors import ConnectionLost, Unavailable

__all__ = [
    "Backoff",
    "RetryBudget",
    "RetryPolicy",
    "call_with_retries",
    "call_with_retries_async",
]

T = TypeVar("T")


def _check_schedule(initial: float, multiplier: float, max_delay: float, jitter: float) -> None:
    if initial <= 0 or max_delay < initial:
        raise ValueError(f"need 0 < initial <= max_delay, got {initial} and {max_delay}")
    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")


class Backoff:
    """Exponential backoff with jitter, plus the window during which to wait.

    The n-th delay (from 0) is ``min(initial * multiplier**n, max_delay)`` scaled by a
    random factor in ``[1 - jitter, 1 + jitter]`` — grpc-go's connection backoff.  Jitter
    keeps many clients of one restarted server from reconnecting in lockstep.

    ``failed()`` starts a window of ``next_delay()`` seconds; ``remaining()`` tells how much
    of it is left (0 once it is over, or before any failure); ``reset()`` after a success.
    Not thread-safe: the owner serialises access (the client holds its connect lock).
    """

    def __init__(
        self,
        initial: float = 1.0,
        multiplier: float = 1.6,
        max_delay: float = 120.0,
        jitter: float = 0.2,
        *,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_schedule(initial, multiplier, max_delay, jitter)
        self.initial = initial
        self.multiplier = multiplier
        self.max_delay = max_delay
        self.jitter = jitter
        self._random = random
        self._clock = clock
        self._base = initial
        self._failures = 0
        self._retry_at = 0.0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last :meth:`reset`."""
        return self._failures

    def next_delay(self) -> float:
        """The next delay in seconds (jittered); the one after it grows by ``multiplier``."""
        base = self._base
        self._base = min(base * self.multiplier, self.max_delay)
        return base * (1.0 + self.jitter * (2.0 * self._random() - 1.0))

    def failed(self) -> float:
        """Record a failure: open a window of :meth:`next_delay` seconds and return it."""
        self._failures += 1
        delay = self.next_delay()
        self._retry_at = self._clock() + delay
        return delay

    def remaining(self) -> float:
        """Seconds left in the current window (0.0 when an attempt may go ahead)."""
        if not self._failures:
            return 0.0
        return max(0.0, self._retry_at - self._clock())

    def reset(self) -> None:
        """Back to the initial delay and no window (after a success)."""
        self._base = self.initial
        self._failures = 0
        self._retry_at = 0.0


class RetryBudget:
    """Thread-safe token bucket that throttles retries across all calls of one client.

    The bucket starts full (``max_tokens``).  Each retry spends one token and each success
    adds ``token_ratio``; a retry is allowed only while more than half the bucket is left.
    Against a server that always fails, a client with a fresh budget therefore makes at most
    ``ceil(max_tokens / 2)`` retries in total, however many calls it makes, and earns one
    more per ``1 / token_ratio`` successes.
    """

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        if not 0 < token_ratio <= max_tokens:
            raise ValueError(f"token_ratio must be in (0, max_tokens], got {token_ratio}")
        self.max_tokens = float(max_tokens)
        self.token_ratio = float(token_ratio)
        self._tokens = float(max_tokens)
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now."""
        return self._tokens

    def record_success(self) -> None:
        """A call succeeded: earn back ``token_ratio`` (capped at ``max_tokens``)."""
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def try_spend(self) -> bool:
        """Take one token for a retry; False (nothing taken) when retries are throttled."""
        with self._lock:
            if self._tokens > self.max_tokens / 2:
                self._tokens -= 1.0
                return True
            return False


@dataclass(frozen=True)
class RetryPolicy:
    """How an idempotent call is retried (gRPC A6 defaults).

    ``max_attempts`` counts the first try.  Delays between attempts follow a
    :class:`Backoff` of ``initial`` x ``multiplier`` capped at ``max_delay``, +- ``jitter``.
    Only ``ConnectionLost`` and ``Unavailable`` are retried: both mean the server did not
    finish the call, and only idempotent calls may safely run twice if it did.
    """

    max_attempts: int = 5
    initial: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 1.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = (ConnectionLost, Unavailable)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        _check_schedule(self.initial, self.multiplier, self.max_delay, self.jitter)

    def backoff(self, *, random: Callable[[], float] = _random.random) -> Backoff:
        """A fresh :class:`Backoff` on this policy's schedule (one per call)."""
        return Backoff(self.initial, self.multiplier, self.max_delay, self.jitter, random=random)


def _retry_delay(
    exc: BaseException,
    attempts: int,
    policy: RetryPolicy,
    backoff: Backoff,
    budget: RetryBudget,
    deadline: float | None,
    clock: Callable[[], float],
) -> float | None:
    """Seconds to wait before retrying after *exc* on attempt *attempts*; None: give up.

    The one rule both clients follow (see :func:`call_with_retries`); a granted retry has
    spent its budget token.
    """
    if not isinstance(exc, policy.retry_on) or attempts >= policy.max_attempts:
        return None
    delay = max(backoff.next_delay(), getattr(exc, "retry_after", 0.0))
    if deadline is not None and clock() + delay >= deadline:
        return None
    if not budget.try_spend():
        return None
    return delay


def call_with_retries(
    attempt: Callable[[float | None], T],
    policy: RetryPolicy,
    budget: RetryBudget,
    deadline: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    random: Callable[[], float] = _random.random,
) -> T:
    """Run ``attempt(timeout)`` until it succeeds, retrying per *policy* within *deadline*.

    *deadline* is an absolute ``clock()`` time (None: no deadline); each attempt gets the
    time left as its timeout, so all attempts share one budget of time.  A retry happens
    only when the error is one the policy retries, attempts remain, the backoff delay ends
    before the deadline, and *budget* grants a token; otherwise the last error propagates.
    An error with a ``retry_after`` attribute (seconds; the client's reconnect backoff window)
    delays the retry at least that long.
    """
    backoff = policy.backoff(random=random)
    attempts = 0
    while True:
        attempts += 1
        timeout = None if deadline is None else max(0.0, deadline - clock())
        try:
            result = attempt(timeout)
        except policy.retry_on as exc:
            delay = _retry_delay(exc, attempts, policy, backoff, budget, deadline, clock)
            if delay is None:
                raise
            sleep(delay)
            continue
        budget.record_success()
        return result


async def call_with_retries_async(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    budget: RetryBudget,
    deadline: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    random: Callable[[], float] = _random.random,
) -> T:
    """:func:`call_with_retries` for coroutines: ``await attempt(timeout)``, and the delays
    are ``asyncio.sleep`` (the loop keeps serving other tasks meanwhile)."""
    import asyncio  # (here: ``import rapidrpc`` must not import asyncio, see rapidrpc.aio)

    backoff = policy.backoff(random=random)
    attempts = 0
    while True:
        attempts += 1
        timeout = None if deadline is None else max(0.0, deadline - clock())
        try:
            result = await attempt(timeout)
        except policy.retry_on as exc:
            delay = _retry_delay(exc, attempts, policy, backoff, budget, deadline, clock)
            if delay is None:
                raise
            await asyncio.sleep(delay)
            continue
        budget.record_success()
        return result
