"""Request budget and bounded retries, with a fake clock: behaviour, not speed."""

import pytest

from m3_recon.clients.http import RequestBudget, RetryPolicy, RetryVerdict, parse_retry_after, retry_call


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_budget_spaces_calls_evenly():
    clock = FakeClock()
    budget = RequestBudget(25, clock=clock.time, sleep=clock.sleep)
    for _ in range(26):
        budget.acquire()
    # 26 calls at 25/s: the first is immediate, the rest wait one interval each.
    assert len(clock.slept) == 25
    assert clock.now - 100.0 == pytest.approx(1.0)


def test_budget_does_not_wait_when_calls_are_already_spaced():
    clock = FakeClock()
    budget = RequestBudget(10, clock=clock.time, sleep=clock.sleep)
    for _ in range(3):
        budget.acquire()
        clock.now += 0.5
    assert clock.slept == []


def test_retry_honours_retry_after_and_stops_at_max_attempts():
    clock = FakeClock()
    calls = []

    def failing():
        calls.append(1)
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError):
        retry_call(failing, lambda exc: RetryVerdict(True, retry_after=3.0), RetryPolicy(max_attempts=4),
                   sleep=clock.sleep)
    assert len(calls) == 4
    assert clock.slept == [3.0, 3.0, 3.0]


def test_retry_caps_backoff_and_reraises_unknown_errors_at_once():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=4.0)
    assert all(policy.delay(n, None) <= 4.0 for n in range(1, 10))
    calls = []

    def broken():
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        retry_call(broken, lambda exc: None, policy, sleep=clock.sleep)
    assert calls == [1] and clock.slept == []


def test_retry_returns_once_the_call_succeeds():
    clock = FakeClock()
    outcomes = iter([ConnectionError(), ConnectionError(), "ok"])

    def flaky():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry_call(flaky, lambda exc: RetryVerdict(True), RetryPolicy(), sleep=clock.sleep) == "ok"
    assert len(clock.slept) == 2


@pytest.mark.parametrize("header,expected", [("2", 2.0), ("0", 0.0), (None, None), ("soon", None), ("-3", 0.0)])
def test_parse_retry_after(header, expected):
    assert parse_retry_after(header) == expected
