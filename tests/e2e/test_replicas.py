"""Two oidc-authz replicas sharing one real Redis behind one Envoy (round robin, gRPC health checks, a Check
retried on the other replica when one dies): they behave as one service. The world is this module's own
(tests/e2e/world.py ReplicaWorld), separate from the single-replica world of the rest of the suite."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ReplicaWorld, Unavailable, in_ci

CC_APP = ("cc-app", "cc-app-secret")


def _wait(cond, what: str, budget: float = 30.0) -> None:
    deadline = time.monotonic() + budget
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {budget:.0f} s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def replicas():
    tmp = Path(tempfile.mkdtemp(prefix="oidc-authz-e2e-replicas-"))
    w = ReplicaWorld(tmp, label="e2e-replicas")
    try:
        try:
            w.ensure("httpbin", "redis", "idp", "authz", "authz_b", "envoy")
        except Unavailable as e:
            if in_ci():
                pytest.fail(f"e2e component unavailable with CI=true: {e}", pytrace=False)
            pytest.skip(str(e))
        _wait(lambda: w.envoy_sees_healthy(2), "Envoy's health checks see both replicas")
        yield w
    except BaseException:
        print(w.describe())
        raise
    finally:
        w.close()


def _both_up(w: ReplicaWorld) -> None:
    w.ensure("authz", "authz_b")
    _wait(lambda: w.envoy_sees_healthy(2), "Envoy's health checks see both replicas")


def test_checks_are_spread_over_both_replicas(replicas: ReplicaWorld):
    _both_up(replicas)
    token = replicas.idp_token(*CC_APP)
    before = {r: replicas.checks_answered(r) for r in ("authz", "authz_b")}
    for _ in range(20):
        r = replicas.get("/api/headers", token=token)
        assert r.status_code == 200, r.text
        assert r.json()["headers"].get("X-User") == "cc-app"
    answered = {r: replicas.checks_answered(r) - before[r] for r in ("authz", "authz_b")}
    assert answered["authz"] > 0 and answered["authz_b"] > 0, f"round robin: {answered}"


def test_a_killed_replica_costs_no_request(replicas: ReplicaWorld):
    """Requests keep flowing from 8 clients while replica B is SIGKILLed: not one fails (Envoy retries the Checks
    B dropped on A, and its health check takes B out); B back, it serves again."""
    _both_up(replicas)
    token = replicas.idp_token(*CC_APP)
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.get(replicas.url("/api/get"), headers={"Authorization": f"Bearer {token}"}, timeout=10)
                ok = r.status_code == 200
                why = f"{r.status_code} {r.text[:120]}"
            except requests.RequestException as e:
                ok, why = False, repr(e)
            with lock:
                counts["ok" if ok else "failed"] += 1
                if not ok:
                    failures.append(why)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: counts["ok"] >= 200, "200 requests before the kill")
        replicas.kill("authz_b")
        at_kill = counts["ok"]
        _wait(lambda: counts["ok"] >= at_kill + 500, "500 more requests after the kill", budget=60)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    stats = requests.get(f"http://127.0.0.1:{replicas.envoy_admin_port}/stats?filter=oidc_authz|ext_authz",
                         timeout=5).text
    assert counts["failed"] == 0, \
        f"{counts['failed']} of {sum(counts.values())} requests failed: {failures[:5]}\n{stats}"
    _both_up(replicas)
    before = replicas.checks_answered("authz_b")

    def b_serves() -> bool:
        # a 503 while B rejoins (Envoy still holding it out) is a "not yet", not a failure
        if replicas.get("/api/headers", token=token).status_code != 200:
            return False
        return replicas.checks_answered("authz_b") > before

    # back in the rotation once its ejection for the refused connections ends (5 s) and its health check passes
    _wait(b_serves, "B serves again once it is back")


def test_a_login_on_one_replica_and_a_backchannel_logout_end_it_on_both(replicas: ReplicaWorld):
    """Log in while only A runs; the session works while only B runs; the provider's back-channel logout (its
    own logout page confirmed) reaches whichever replica Envoy picks, and the session is over on both."""
    from browserflow import login_ok
    from test_login import _end_idp_session

    _both_up(replicas)
    replicas.only("authz")
    b, _ = login_ok(replicas)
    replicas.only("authz_b")
    # A is stopped: any 200 now is B's. Envoy may still hold B out for a few seconds (its outlier ejection from
    # when B was stopped), answering 503 meanwhile: wait for B, within a budget.
    _wait(lambda: b.go(replicas.url("/login/headers")).status_code == 200, "a session made on A is a session on B")
    _both_up(replicas)
    _end_idp_session(replicas, b)
    for replica in ("authz", "authz_b"):
        replicas.only(replica)
        _wait(lambda: b.go(replicas.url("/login/headers")).status_code == 302, f"the session is over on {replica}")
    _both_up(replicas)
