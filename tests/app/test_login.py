"""Failed logins are throttled per user name and per address, and each lock is logged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.login import LOCK_SECONDS, MAX_FAILURES, Throttle
from tests.live_app import live_app, seed_project


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_five_failures_lock_for_thirty_seconds_and_a_success_starts_over() -> None:
    clock = Clock()
    throttle = Throttle(clock=clock)
    assert (MAX_FAILURES, LOCK_SECONDS) == (5, 30.0)
    for _ in range(4):
        assert throttle.failed("user:ann", "address:a") == []
    assert throttle.wait_seconds("user:ann") == 0
    assert throttle.failed("user:ann", "address:a") == ["user:ann", "address:a"]
    assert throttle.wait_seconds("user:ann") == 30 and throttle.wait_seconds("user:bob", "address:a") == 30
    assert throttle.wait_seconds("user:bob", "address:b") == 0  # others are not affected
    clock.now += 29
    assert 0 < throttle.wait_seconds("user:ann") <= 1
    clock.now += 1
    assert throttle.wait_seconds("user:ann", "address:a") == 0
    assert throttle.failed("user:ann") == []  # after a lock, the count starts over
    for _ in range(3):
        throttle.failed("user:ann")
    throttle.succeeded("user:ann")
    assert all(throttle.failed("user:ann") == [] for _ in range(4))  # a success cleared the count


def test_the_table_of_names_and_addresses_stays_bounded() -> None:
    throttle = Throttle(clock=Clock(), max_tracked=100)
    for i in range(1000):
        throttle.failed(f"user:u{i}")
    assert len(throttle._records) == 100


@pytest.mark.slow
def test_a_running_app_throttles_per_user_and_per_address(tmp_path: Path) -> None:
    """Addresses are told apart by X-Forwarded-For, as behind a reverse proxy on the same machine."""
    import httpx

    data = tmp_path / "data"
    seed_project(data, 0)
    with live_app(data, env={"RESI_AUTH": "ann:right\nbob:pw2\ncarl:pw3"}) as app:
        def login(user: str, password: str, address: str) -> int:
            response = httpx.post(app.url + "login", data={"username": user, "password": password},
                                  headers={"X-Forwarded-For": address}, timeout=60)
            return response.status_code

        assert login("ann", "right", "10.0.0.9") == 200
        assert [login("ann", f"wrong{i}", "10.0.0.1") for i in range(MAX_FAILURES)] == [400] * MAX_FAILURES
        started = time.monotonic()
        assert login("ann", "right", "10.0.0.2") == 429  # the user name is locked, from any address
        assert login("bob", "pw2", "10.0.0.1") == 429  # and so is the address, for any user name
        assert login("bob", "pw2", "10.0.0.2") == 200
        assert login("carl", "pw3", "10.0.0.3") == 200
        assert time.monotonic() - started < LOCK_SECONDS  # all of that within the lock
        time.sleep(1)
        output = "".join(app.log)
    assert "failed attempts in a row for user:ann (user 'ann' from 10.0.0.1); it is locked for 30 s" in output
    assert "failed attempts in a row for address:10.0.0.1" in output
    assert "wrong" not in output  # passwords are never logged
