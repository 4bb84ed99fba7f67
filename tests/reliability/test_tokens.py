"""Wrong or missing steering tokens are all refused, and the comparison is hmac.compare_digest."""
from __future__ import annotations

import hmac

from opmon.streaming import control


def test_wrong_tokens_are_all_refused(fuzz):
    report = fuzz.wrong_tokens(400, seed=5)
    assert report["accepted"] == 0
    assert report["refused_bad_token"] == 400
    assert set(report["kinds"]) == {"missing", "empty", "one_char_off", "prefix", "longer", "wrong_type"}
    assert report["run_state_after"] == "idle"


def test_token_comparison_is_constant_time(monkeypatch):
    calls = []
    compare = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(control.hmac, "compare_digest", spy)
    assert control.check_token("secret-token", "secret-token")
    assert not control.check_token("secret-tokeX", "secret-token")
    assert not control.check_token("\ud800", "secret-token")     # not UTF-8 encodable: refused, no exception
    assert len(calls) == 2 and all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
