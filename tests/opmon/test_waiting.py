"""The bounded poll: true as soon as the condition holds, false when the deadline passes or the
wait is cancelled, and never a wait longer than asked for."""
from __future__ import annotations

import threading
from itertools import count

from opmon.waiting import until


def test_returns_true_at_the_first_check_that_holds():
    calls = count(1)
    assert until(lambda: next(calls) >= 3, timeout_s=3600, interval_s=0.001)
    assert next(calls) == 4                      # checked exactly three times


def test_a_condition_that_never_holds_gives_false_after_the_deadline_and_one_last_check():
    calls: list[int] = []
    assert not until(lambda: calls.append(1), timeout_s=0.05, interval_s=0.01)
    assert len(calls) >= 2                       # polled, then checked once more at the deadline


def test_a_condition_met_during_the_last_interval_still_counts():
    calls = count(1)
    # false at the first check; the pause is cut at the deadline, and the last check finds it true
    assert until(lambda: next(calls) >= 2, timeout_s=0.02, interval_s=10.0)
    assert next(calls) == 3


def test_a_set_cancel_event_ends_the_wait_at_once():
    cancel = threading.Event()
    cancel.set()
    assert not until(lambda: False, timeout_s=3600, cancel=cancel)   # would hang (test timeout) if ignored


def test_cancel_wakes_a_long_pause():
    cancel = threading.Event()
    threading.Timer(0.05, cancel.set).start()
    assert not until(lambda: False, timeout_s=3600, interval_s=3600, cancel=cancel)
