"""Backoff, RetryBudget, RetryPolicy and call_with_retries (HOSTILE 33, 34).

Pure bookkeeping with no backend split, so these tests don't take the ``backend``
fixture; random source, clock and sleep are injected, nothing sleeps for real.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest

from rapidrpc.errors import ConnectionLost, DeadlineExceeded, RemoteError, Unavailable
from rapidrpc.transport.resilience import Backoff, RetryBudget, RetryPolicy, call_with_retries


class FakeClock:
    """A monotonic clock that only moves when told (``sleep`` advances it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def constant(value: float) -> Callable[[], float]:
    return lambda: value


def test_backoff_defaults_follow_grpc_go_schedule() -> None:
    b = Backoff(random=constant(0.5))  # 0.5 -> no jitter
    delays = [b.next_delay() for _ in range(14)]
    assert delays[:4] == pytest.approx([1.0, 1.6, 2.56, 4.096])
    assert delays[-1] == 120.0  # capped
    assert all(a <= b for a, b in itertools.pairwise(delays))


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.8), (1.0, 1.2), (0.25, 0.9)])
def test_backoff_jitter_bounds(rand: float, factor: float) -> None:
    b = Backoff(random=constant(rand))
    assert b.next_delay() == pytest.approx(1.0 * factor)
    assert b.next_delay() == pytest.approx(1.6 * factor)


def test_backoff_cap_applies_before_jitter() -> None:
    b = Backoff(initial=10, multiplier=10, max_delay=50, jitter=0.2, random=constant(1.0))
    assert [b.next_delay() for _ in range(3)] == pytest.approx([12.0, 60.0, 60.0])


def test_backoff_window_and_reset() -> None:
    clock = FakeClock()
    b = Backoff(random=constant(0.5), clock=clock)
    assert b.remaining() == 0.0 and b.failures == 0
    assert b.failed() == 1.0
    assert b.remaining() == pytest.approx(1.0)
    clock.now += 0.75
    assert b.remaining() == pytest.approx(0.25)
    clock.now += 0.25
    assert b.remaining() == 0.0
    assert b.failed() == pytest.approx(1.6)  # the next failure waits longer
    assert b.failures == 2
    b.reset()
    assert b.remaining() == 0.0 and b.failures == 0
    assert b.failed() == 1.0  # back to the initial delay


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": 2, "max_delay": 1},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_backoff_rejects_bad_schedules(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_budget_allows_half_the_bucket_then_throttles() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    assert [budget.try_spend() for _ in range(7)] == [True] * 5 + [False] * 2
    assert budget.tokens == 5.0  # a refused retry takes nothing
    budget.record_success()  # 5.1 > 5: one more retry earned
    assert budget.try_spend() is True
    assert budget.try_spend() is False


def test_budget_success_is_capped() -> None:
    budget = RetryBudget(max_tokens=4, token_ratio=1)
    for _ in range(10):
        budget.record_success()
    assert budget.tokens == 4.0


@pytest.mark.parametrize("kwargs", [{"max_tokens": 0}, {"token_ratio": 0}, {"token_ratio": 20}])
def test_budget_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**kwargs)


def test_budget_is_thread_safe() -> None:
    budget = RetryBudget(max_tokens=1000, token_ratio=1)
    granted: list[int] = []

    def spend() -> None:
        granted.append(sum(budget.try_spend() for _ in range(200)))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 500  # exactly half the bucket, never more
    assert budget.tokens == 500.0


def test_policy_defaults_match_hostile_table() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.initial, p.multiplier, p.max_delay, p.jitter) == (
        5,
        0.1,
        2.0,
        1.0,
        0.2,
    )
    b = p.backoff(random=constant(0.5))
    assert [b.next_delay() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class Flaky:
    """An attempt function that raises the given errors in turn, then returns "ok"."""

    def __init__(self, clock: FakeClock, *errors: BaseException, cost: float = 0.0) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.timeouts: list[float | None] = []
        self.cost = cost

    def __call__(self, timeout: float | None) -> str:
        self.timeouts.append(timeout)
        self.clock.now += self.cost
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(flaky: Flaky, clock: FakeClock, **kw: object) -> str:
    kw.setdefault("policy", RetryPolicy())
    kw.setdefault("budget", RetryBudget())
    kw.setdefault("deadline", None)
    return call_with_retries(flaky, clock=clock, sleep=clock.sleep, random=constant(0.5), **kw)  # type: ignore[arg-type]


def test_retries_connection_lost_and_unavailable_with_backoff() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, ConnectionLost("gone"), Unavailable("busy"), ConnectionLost("x"))
    budget = RetryBudget()
    assert run(flaky, clock, budget=budget) == "ok"
    assert clock.slept == pytest.approx([0.1, 0.2, 0.4])
    assert len(flaky.timeouts) == 4
    assert budget.tokens == pytest.approx(10 - 3 + 0.1)


@pytest.mark.parametrize(
    "error",
    [DeadlineExceeded("late"), RemoteError("boom"), ValueError("bad"), TimeoutError()],
)
def test_other_errors_are_not_retried(error: BaseException) -> None:
    clock = FakeClock()
    flaky = Flaky(clock, error)
    with pytest.raises(type(error)):
        run(flaky, clock)
    assert len(flaky.timeouts) == 1 and clock.slept == []


def test_max_attempts_counts_the_first_try() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, *[ConnectionLost(str(i)) for i in range(10)])
    with pytest.raises(ConnectionLost, match=r"^2$"):
        run(flaky, clock, policy=RetryPolicy(max_attempts=3))
    assert len(flaky.timeouts) == 3


def test_all_attempts_share_one_deadline() -> None:
    clock = FakeClock()
    flaky = Flaky(clock, *[Unavailable(str(i)) for i in range(10)], cost=0.05)
    with pytest.raises(Unavailable):
        run(flaky, clock, deadline=clock.now + 0.5)
    # attempt at 100.0 (0.5 left), sleep 0.1, attempt at 100.15, sleep 0.2, attempt at
    # 100.4; the next delay (0.4) would end past the deadline, so no fourth attempt.
    assert flaky.timeouts == pytest.approx([0.5, 0.35, 0.1])
    assert clock.now <= 100.5


def test_budget_stops_a_retry_storm() -> None:
    clock = FakeClock()
    budget = RetryBudget(max_tokens=4)
    attempts = 0
    calls = 20
    for _ in range(calls):
        flaky = Flaky(clock, *[Unavailable("down") for _ in range(10)])
        with pytest.raises(Unavailable):
            run(flaky, clock, budget=budget)
        attempts += len(flaky.timeouts)
    assert attempts == calls + 2  # two retries in all, not four per call


def test_success_without_retry_earns_tokens() -> None:
    clock = FakeClock()
    budget = RetryBudget(max_tokens=10, token_ratio=0.5)
    budget.try_spend()
    assert run(Flaky(clock), clock, budget=budget) == "ok"
    assert budget.tokens == 9.5


def test_retry_waits_at_least_retry_after() -> None:
    clock = FakeClock()
    error = ConnectionLost("reconnecting in 0.7 s")
    error.retry_after = 0.7  # type: ignore[attr-defined]
    assert run(Flaky(clock, error), clock) == "ok"
    assert clock.slept == [0.7]  # the reconnect window, not the policy's 0.1 s
