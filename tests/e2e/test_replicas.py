"""Two oidc-authz replicas sharing one real Redis behind one Envoy (round robin, gRPC health checks, a Check
retried on the other replica when one dies): they behave as one service. The world is this module's own
(tests/e2e/world.py ReplicaWorld), separate from the single-replica world of the rest of the suite; a second one
(`replicas_cluster`) shares a three-node Redis Cluster instead.

Which replica answered a request is read from the replicas' own logs (each Check logs its path): requests meant
to be told apart carry a unique path."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import ReplicaWorld, Unavailable, in_ci

CC_APP = ("cc-app", "cc-app-secret")
REPLICAS = ("authz", "authz_b")
STORE = ReplicaWorld.STORE_LOGIN
XHR = {"Accept": "application/json"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def _wait(cond, what: str, budget: float = 60.0) -> None:
    deadline = time.monotonic() + budget
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {budget:.0f} s: {what}")
        time.sleep(0.1)


def _replica_world(request, redis_cluster: bool):
    """A ReplicaWorld with both replicas healthy in Envoy; its directory (logs) is removed afterwards unless a
    test of the module failed (or E2E_KEEP is set)."""
    failed_before = request.session.testsfailed
    kind = "cluster" if redis_cluster else "replicas"
    tmp = Path(tempfile.mkdtemp(prefix=f"oidc-authz-e2e-{kind}-"))
    w = ReplicaWorld(tmp, redis_cluster=redis_cluster, label=f"e2e-{kind}")
    ok = False
    try:
        try:
            w.ensure("httpbin", "redis", "idp", "authz", "authz_b", "envoy")
        except Unavailable as e:
            if in_ci():
                pytest.fail(f"e2e component unavailable with CI=true: {e}", pytrace=False)
            pytest.skip(str(e))
        _wait(lambda: w.envoy_sees_healthy(2), "Envoy's health checks see both replicas")
        yield w
        ok = request.session.testsfailed == failed_before
    except BaseException:
        print(w.describe())
        raise
    finally:
        w.close()
        if ok and not os.environ.get("E2E_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def replicas(request):
    yield from _replica_world(request, redis_cluster=False)


@pytest.fixture(scope="module")
def replicas_cluster(request):
    """Both replicas on a three-node Redis Cluster (`url` lists the nodes, `cluster = true`)."""
    yield from _replica_world(request, redis_cluster=True)


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


def _bearer_load_while(w: ReplicaWorld, token: str, what: str, action) -> tuple[int, list]:
    """8 clients send bearer requests without pause (each on its own path: who answered is logged); once 200 have
    passed, `action()` runs, and the load goes on for 500 more. (requests sent, failures as (path, status, why))."""
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    failures: list[tuple[str, int | None, str]] = []
    lock = threading.Lock()

    def client(k: int):
        s = requests.Session()
        for n in itertools.count():
            if stop.is_set():
                return
            path, status = f"/api/anything/c{k}-{n}", None
            try:
                r = s.get(w.url(path), headers={"Authorization": f"Bearer {token}"}, timeout=10)
                status, ok = r.status_code, r.status_code == 200
                why = f"{path}: {r.status_code} {r.text[:120]}"
            except requests.RequestException as e:
                ok, why = False, f"{path}: {e!r}"
            with lock:
                counts["ok" if ok else "failed"] += 1
                if not ok:
                    failures.append((path, status, why))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: counts["ok"] >= 200, f"200 requests before {what}")
        action()
        at = counts["ok"]
        _wait(lambda: counts["ok"] >= at + 500, f"500 more requests after {what}", budget=60)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    return sum(counts.values()), failures


def _envoy_stats(w: ReplicaWorld) -> str:
    return requests.get(f"http://127.0.0.1:{w.envoy_admin_port}/stats?filter=oidc_authz|ext_authz", timeout=5).text


def _b_serves_again(w: ReplicaWorld, token: str) -> None:
    _both_up(w)
    before = w.checks_answered("authz_b")

    def b_serves() -> bool:
        # a 503 while B rejoins (Envoy still holding it out) is a "not yet", not a failure
        if w.get("/api/headers", token=token).status_code != 200:
            return False
        return w.checks_answered("authz_b") > before

    # back in the rotation once its ejection for the refused connections ends (5 s) and its health check passes
    _wait(b_serves, "B serves again once it is back")


def test_a_killed_replica_costs_no_request(replicas: ReplicaWorld):
    """Requests keep flowing from 8 clients while replica B is SIGKILLed: not one fails (Envoy retries the Checks
    B dropped on A, and its health check takes B out), but for an answer B had begun to send (`_cut_by_the_kill`);
    B back, it serves again."""
    _both_up(replicas)
    token = replicas.idp_token(*CC_APP)
    total, failures = _bearer_load_while(replicas, token, "the kill", lambda: replicas.kill("authz_b"))
    stats = _envoy_stats(replicas)
    cut, failed = _cut_by_the_kill(replicas, failures)
    assert not failed, f"{len(failed)} of {total} requests failed: {failed[:5]}\n{stats}"
    assert len(cut) <= MAX_CUT_BY_THE_KILL, f"{len(cut)} answers cut by the kill: {cut}\n{stats}"
    _b_serves_again(replicas, token)


def test_a_replica_stopped_with_sigterm_costs_no_request_at_all(replicas: ReplicaWorld):
    """A rolling update's stop: replica B gets SIGTERM while 8 clients send requests. It says NOT_SERVING to
    Envoy's health checks, finishes the Checks it has and exits; Envoy sends the rest to A. Not one request fails,
    without exception."""
    _both_up(replicas)
    token = replicas.idp_token(*CC_APP)
    total, failures = _bearer_load_while(replicas, token, "B's SIGTERM", lambda: replicas.stop("authz_b"))
    log = replicas.components["authz_b"].log.read_text(errors="replace")
    assert "shutting down: draining in-flight checks" in log, "B took the SIGTERM as a drain"
    assert not failures, f"{len(failures)} of {total} requests failed: {failures[:5]}\n{_envoy_stats(replicas)}"
    _b_serves_again(replicas, token)


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


# ---------------------------------------------------------------------------------------------------------------
# which replica answered: the replicas' own logs
# ---------------------------------------------------------------------------------------------------------------
_SEQ = itertools.count()


def _unique(prefix: str) -> str:
    """A path under `prefix` no other request uses (so the replica that answered it can be found in the logs)."""
    return f"{prefix}/probe-{next(_SEQ)}-{uuid.uuid4().hex[:8]}"


def _mark(w: ReplicaWorld) -> dict[str, int]:
    """Where each replica's log ends now: `_checks_of(..., since=mark)` reads only what comes after."""
    return {r: w.components[r].log.stat().st_size if w.components[r].log.exists() else 0 for r in REPLICAS}


def _lines_since(w: ReplicaWorld, replica: str, since: dict[str, int] | None) -> list[bytes]:
    try:
        with open(w.components[replica].log, "rb") as f:
            f.seek((since or {}).get(replica, 0))
            return f.read().splitlines()
    except OSError:
        return []


def _checks_of(w: ReplicaWorld, path: str, since: dict[str, int] | None = None) -> list[tuple[str, dict]]:
    """(replica, log record) of every Check of exactly `path` the replicas logged (after `since`), cancelled tries
    left out."""
    out = []
    needle = f'"request.path":"{path}"'.encode()
    for r in REPLICAS:
        for line in _lines_since(w, r, since):
            if needle not in line or b'"message":"check"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("request.path") == path and rec.get("decision") != "cancelled":
                out.append((r, rec))
    return out


def _who(w: ReplicaWorld, path: str, since: dict[str, int] | None = None) -> tuple[str, dict]:
    """The one replica that answered the Check of `path` (after `since`), and its log record (polled: the Check is
    logged before it is answered, so this is quick)."""
    found: list[tuple[str, dict]] = []

    def logged() -> bool:
        found[:] = _checks_of(w, path, since)
        return bool(found)

    _wait(logged, f"a replica logs the Check of {path}", budget=10)
    assert len(found) == 1, f"{path} answered by more than one replica: {found}"
    return found[0]


def _other(replica: str) -> str:
    return "authz_b" if replica == "authz" else "authz"


# the two session storages: the start page, the policy's callback and logout paths, and a prefix for probes
KINDS = {
    "store": (f"{STORE}/headers", f"{STORE}/callback", f"{STORE}/logout", STORE),
    "cookie": ("/login/headers", "/oauth2/callback", "/oauth2/logout", "/login/anything"),
}


def _login(w: ReplicaWorld, user: str, kind: str):
    from browserflow import login_ok

    start, callback, _, _ = KINDS[kind]
    b, r = login_ok(w, user, start, callback_path=callback)
    assert r.json()["headers"].get("X-User") == user, r.text
    return b


def _probe(w: ReplicaWorld, kind: str, b=None, cookies: dict | None = None,
           headers: dict | None = None) -> tuple[requests.Response, str, float]:
    """One request on a unique path of the kind's routes, with the browser `b` or only `cookies`: (answer, the
    replica that answered, when it was sent)."""
    from browserflow import cookie_header

    path = _unique(KINDS[kind][3])
    sent = time.monotonic()
    if b is not None:
        r = b.go(w.url(path), headers=headers)
    else:
        r = requests.get(w.url(path), headers={**(headers or {}), "Cookie": cookie_header(cookies or {})},
                         allow_redirects=False, timeout=10)
    who, _ = _who(w, path)
    return r, who, sent


def _logout(w: ReplicaWorld, b, kind: str) -> str:
    """Log out with the browser (a same-origin POST to the policy's logout path): the replica that took it."""
    logout = KINDS[kind][2]
    mark = _mark(w)
    r = b.post(w.url(logout), headers={"Origin": w.url("/").rstrip("/"), **SAME_ORIGIN})
    assert r.status_code == 302 and r.headers["Location"].startswith(w.discovery()["end_session_endpoint"]), \
        f"logout: {r.status_code} {r.headers} {r.text[:300]}"
    assert not b.session_cookies(), "the logout clears the session cookie"
    who, _ = _who(w, logout, since=mark)
    return who


# ---------------------------------------------------------------------------------------------------------------
# sessions across replicas (cookie and store storage, one Redis and a Redis Cluster)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("redis", ["redis", "cluster"])
@pytest.mark.parametrize("kind", ["store", "cookie"])
def test_a_login_through_one_replica_is_served_by_the_other_and_its_logout_refused_there_at_once(
        request, kind: str, redis: str):
    """A session made by one replica's callback is served by the other; a logout through one replica is refused
    by the other at once: it had just allowed the session (its local "not ended" answer is at most 1 s old), and
    no replica allows the copied cookie a request sent 2 s after the logout or later. With store storage the
    cookie holds only the sealed session id: small, and the same size for another user."""
    w: ReplicaWorld = request.getfixturevalue("replicas" if redis == "redis" else "replicas_cluster")
    _both_up(w)
    mark = _mark(w)
    b = _login(w, "alice", kind)
    made_by, _ = _who(w, KINDS[kind][1], since=mark)

    def served_by(replica: str) -> bool:
        r, who, _ = _probe(w, kind, b=b)
        assert r.status_code == 200 and r.json()["headers"].get("X-User") == "alice", \
            f"{who}: {r.status_code} {r.text[:300]}"
        return who == replica

    _wait(lambda: served_by(_other(made_by)), f"the session made by {made_by} is served by {_other(made_by)}")

    if kind == "store":
        cookies = b.session_cookies()
        assert list(cookies) == ["oidc_authz_session"], cookies
        value = cookies["oidc_authz_session"]
        assert len(value) <= 100 and "eyJ" not in value, f"a store session's cookie: {len(value)} chars"
        bob = _login(w, "bob", kind)
        assert [len(v) for v in bob.session_cookies().values()] == [len(value)], "the cookie's size is constant"
        print(f"a store session's cookie: {len(value)} characters")

    # both replicas answer for the session just before the logout (each holds its local "not ended" answer)
    _wait(lambda: served_by(made_by), f"{made_by} serves the session")
    _wait(lambda: served_by(_other(made_by)), f"{_other(made_by)} serves the session")
    copy = dict(b.session_cookies())
    took = _logout(w, b, kind)
    ended_at = time.monotonic()
    late: list[float] = []
    refusing = {took}

    def refused_by(replica: str) -> bool:
        r, who, sent = _probe(w, kind, cookies=copy, headers=XHR)
        if r.status_code == 200:
            assert who not in refusing, f"{who} allowed the logged-out session after refusing it (or taking the logout)"
            late.append(round(sent - ended_at, 3))
            return False
        assert r.status_code == 401, f"{who}: {r.status_code} {r.text[:300]}"
        refusing.add(who)
        return who == replica

    _wait(lambda: refused_by(_other(took)), f"the logout through {took} is refused by {_other(took)}")
    _wait(lambda: refused_by(took), f"the logout is still refused by {took}")
    _wait(lambda: refused_by(_other(took)), f"the logout is still refused by {_other(took)}")
    print(f"{kind} session on {redis}: logout through {took}; the copied cookie allowed for requests sent {late} s "
          f"after it")
    assert all(t < 2.0 for t in late), \
        f"{_other(took)} allowed the logged-out session for requests sent {late} s after the logout (at most 1 s)"
    if w.redis_cluster:
        keys = {n: w.redis_command(n, "DBSIZE") for n in w.redis_nodes}
        assert sum(keys.values()) > 0, f"the sessions are kept in the Redis Cluster: keys per node {keys}"


# ---------------------------------------------------------------------------------------------------------------
# a replica killed under 50 logged-in users
# ---------------------------------------------------------------------------------------------------------------
# A Check whose answer B had begun to send when it was SIGKILLed: Envoy has the response headers of that gRPC call
# and then a reset, and Envoy retries a gRPC call only before its response begins, so the request gets Envoy's
# 503 (status_on_error). It is the one failure a SIGKILL can cause (seen once in ~20 runs of ~800 requests; SIGTERM
# drains instead: README, "Running several replicas"). It is told apart from any other failure by the logs: B logged
# a decision for exactly that request's unique path and A logged none. At most one such Check per client in flight
# could exist; more than two would mean something else is wrong.
MAX_CUT_BY_THE_KILL = 2


def _cut_by_the_kill(w: ReplicaWorld, failures: list[tuple[str, int | None, str]]) -> tuple[list[str], list[str]]:
    """Split failed requests (path, status, description) into the answers B's SIGKILL cut mid-flight (503, decided
    by B alone, per the logs) and every other failure."""
    cut, other = [], []
    for path, status, why in failures:
        logged = _checks_of(w, path)
        line = f"{why}; logged by {[(r, rec.get('decision')) for r, rec in logged]}"
        by_b_alone = bool(logged) and all(r == "authz_b" for r, _ in logged)
        (cut if status == 503 and by_b_alone else other).append(line)
    return cut, other


def test_fifty_logged_in_users_lose_nothing_when_a_replica_is_killed(replicas: ReplicaWorld):
    """50 users (half with cookie sessions, half with store sessions) send requests without pause while replica B
    is SIGKILLed: not one request fails (but for an answer B had begun to send: `_cut_by_the_kill`), and afterwards every session still answers 200, through A alone and
    through both once B is back."""
    w = replicas
    _both_up(w)
    users = [("alice" if i % 2 else "bob", "store" if i % 4 >= 2 else "cookie") for i in range(50)]
    with ThreadPoolExecutor(4) as ex:
        browsers = list(ex.map(lambda u: _login(w, *u), users))
    page = {"store": f"{STORE}/headers", "cookie": "/login/headers"}
    prefix = {"store": STORE, "cookie": "/login/anything"}  # each request its own path: who answered is in the logs
    stop = threading.Event()
    lock = threading.Lock()
    ok = [0] * len(users)        # per user
    ok_after_kill = [0] * len(users)
    failures: list[str] = []
    killed = threading.Event()

    def user(i: int) -> None:
        b, (_, kind) = browsers[i], users[i]
        for n in itertools.count():
            if stop.is_set():
                return
            path = f"{prefix[kind]}/u{i}-{n}"
            status = None
            try:
                r = b.go(w.url(path))
                status, good = r.status_code, r.status_code == 200
                why = f"{path} ({kind}): {r.status_code} {r.headers.get('location', '')[:80]} {r.text[:120]}"
            except requests.RequestException as e:
                good, why = False, f"{path} ({kind}): {e!r}"
            with lock:
                if good:
                    ok[i] += 1
                    if killed.is_set():
                        ok_after_kill[i] += 1
                else:
                    failures.append((path, status, why))

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(len(users))]
    for t in threads:
        t.start()
    try:
        _wait(lambda: min(ok) >= 2 and sum(ok) >= 200, "every user's requests flowing (200 in all)", budget=60)
        killed.set()
        w.kill("authz_b")
        at_kill = sum(ok)
        _wait(lambda: sum(ok) >= at_kill + 500 and min(ok_after_kill) >= 2,
              "500 more requests after the kill, every user's among them", budget=120)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    total = sum(ok) + len(failures)
    print(f"50 users, B killed: {total} requests ({sum(ok) - at_kill} after the kill), {len(failures)} failed")
    stats = requests.get(f"http://127.0.0.1:{w.envoy_admin_port}/stats?filter=oidc_authz|ext_authz", timeout=5).text
    # for each failed request: which replica logged a decision for it (one the killed B logged had been decided
    # when B died, so B was killed while answering it)
    cut, failed = _cut_by_the_kill(w, failures)
    # Envoy's access log lines of the failed requests (flags, details, duration: a retry budget spent shows there)
    envoy_log = w.components["envoy"].log.read_text(errors="replace").splitlines()
    seen = [line for line in envoy_log if any(f'{path}"' in line for path, _, _ in failures)]
    assert not failed, f"{len(failed)} of {total} requests failed: {failed[:5]}\n{seen[:10]}\n{stats}"
    assert len(cut) <= MAX_CUT_BY_THE_KILL, f"{len(cut)} answers cut by the kill: {cut}\n{stats}"
    # no session lost: each answers through A alone (B is dead) ...
    for i, b in enumerate(browsers):
        r = b.go(w.url(page[users[i][1]]))
        assert r.status_code == 200, f"user {i} {users[i]} after the kill: {r.status_code} {r.text[:200]}"
    # ... and through both once B is back in the rotation (a 503 while Envoy still holds B out is a "not yet")
    _both_up(w)

    def answers(i: int, replica: str | None = None) -> bool:
        kind = users[i][1]
        r, who, _ = _probe(w, kind, b=browsers[i])
        assert r.status_code in (200, 503), f"user {i} {users[i]} with B back: {r.status_code} {r.text[:200]}"
        return r.status_code == 200 and replica in (None, who)

    _wait(lambda: answers(2, "authz_b"), "B serves a store session again once it is back")
    for i in range(len(browsers)):
        _wait(lambda i=i: answers(i), f"user {i}'s session answers with B back")


# ---------------------------------------------------------------------------------------------------------------
# a cold burst for one new opaque token
# ---------------------------------------------------------------------------------------------------------------
def _introspections(w: ReplicaWorld, replica: str) -> float:
    """Every introspection call a replica made (whatever its outcome)."""
    return w.metric(replica, 'oidc_authz_idp_requests_total{provider="okta",endpoint="introspection",')


def test_a_cold_burst_for_one_new_opaque_token_costs_at_most_one_introspection_per_replica(replicas: ReplicaWorld):
    """1000 Checks for one new opaque token from 32 clients at once, over both replicas: at most 2 introspection
    calls in all (at most one per replica; none once one replica has stored the answer), then none at all."""
    from test_introspection import opaque_token

    w = replicas
    _both_up(w)
    token = opaque_token(w)
    starts = {r: w.components[r].starts for r in REPLICAS}
    before = {r: _introspections(w, r) for r in REPLICAS}
    checks = {r: w.checks_answered(r) for r in REPLICAS}
    mark = _mark(w)
    local = threading.local()

    def one(i: int) -> tuple[int, str]:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        r = s.get(w.url(f"/anything/introspect-shared/{i}"), headers={"Authorization": f"Bearer {token}"},
                  allow_redirects=False, timeout=10)
        return r.status_code, (r.json()["headers"].get("X-User", "") if r.status_code == 200 else r.text[:200])

    with ThreadPoolExecutor(32) as ex:
        answers = list(ex.map(one, range(1000)))
    bad = [a for a in answers if a != (200, "cc-app")]
    assert not bad, f"{len(bad)} of 1000 not allowed as cc-app: {bad[:5]}"
    # The counters cannot have under-counted: the same processes (a restarted replica would have lost its count),
    # and no Check cancelled (a call is counted when it returns: one cut off with its Check would be missing).
    assert {r: w.components[r].starts for r in REPLICAS} == starts and all(w.running(r) for r in REPLICAS)
    cancelled = [r for r in REPLICAS for line in _lines_since(w, r, mark) if b'"decision":"cancelled"' in line]
    assert not cancelled, f"Checks cancelled during the burst on {cancelled}"
    calls = {r: _introspections(w, r) - before[r] for r in REPLICAS}
    spread = {r: w.checks_answered(r) - checks[r] for r in REPLICAS}
    print(f"cold burst of 1000 Checks over {spread}: introspection calls {calls}")
    assert all(n > 0 for n in spread.values()), f"both replicas answered: {spread}"
    assert 1 <= sum(calls.values()) <= 2 and all(n <= 1 for n in calls.values()), \
        f"introspection calls per replica {calls} for 1000 Checks {spread}"
    with ThreadPoolExecutor(32) as ex:
        again = list(ex.map(one, range(1000, 1200)))
    assert all(a == (200, "cc-app") for a in again)
    assert {r: _introspections(w, r) - before[r] for r in REPLICAS} == calls, "a warm token costs no call"


# ---------------------------------------------------------------------------------------------------------------
# Redis stopped, and started again
# ---------------------------------------------------------------------------------------------------------------
def _readyz(w: ReplicaWorld, replica: str) -> requests.Response:
    return requests.get(w.admin_url(replica, "/readyz"), timeout=5)


def test_redis_stopped_gives_the_documented_answers_and_its_return_recovers_by_itself(replicas: ReplicaWorld):
    """Redis stops: a store session and the ended-session check of a cookie session answer 503 (JSON, retry-after)
    on both replicas; bearer JWTs, introspection (at the IdP, or from a replica's warm cache, or a new token) still
    pass; /readyz stays 200 and says the store is unavailable. Redis starts again (with its data): the same
    sessions work again, with no replica restarted."""
    from test_introspection import opaque_token

    w = replicas
    _both_up(w)
    sessions = {kind: _login(w, "alice", kind) for kind in ("store", "cookie")}
    jwt = w.idp_token(*CC_APP)
    warm = opaque_token(w)
    seen: set[str] = set()

    def warmed() -> bool:  # both replicas hold the introspection answer for `warm` in their local cache
        path = _unique("/anything/introspect-shared")
        assert w.get(path, token=warm).status_code == 200
        seen.add(_who(w, path)[0])
        return seen == set(REPLICAS)

    _wait(warmed, "both replicas answered for the warm opaque token")
    starts = {r: w.components[r].starts for r in REPLICAS}
    assert w.redis_command("redis", "SAVE") == "OK"  # its data survives the stop (the start loads dump.rdb)
    w.stop("redis")

    # store-backed answers: 503 on both replicas (a replica may allow a session it checked in the last second)
    for kind, b in sessions.items():
        def unavailable_on(replica: str, kind=kind, b=b) -> bool:
            r, who, _ = _probe(w, kind, b=b, headers=XHR)
            if r.status_code == 200:
                return False
            assert r.status_code == 503, f"{kind} session on {who} with Redis down: {r.status_code} {r.text[:300]}"
            body = r.json()
            assert body["error"] == "temporarily_unavailable" and body["status"] == 503, body
            assert r.headers.get("content-type", "").startswith("application/json") and r.headers.get("retry-after")
            return who == replica

        for replica in REPLICAS:
            _wait(lambda replica=replica: unavailable_on(replica),
                  f"a {kind} session is 503 on {replica} with Redis down")

    # token methods keep answering, on both replicas
    new = opaque_token(w)
    for path, token in (("/api/headers", jwt), ("/introspect/headers", warm),
                        ("/anything/introspect-shared/warm", warm), ("/anything/introspect-shared/new", new)):
        for _ in range(4):
            r = w.get(path, token=token)
            assert r.status_code == 200 and r.json()["headers"].get("X-User") == "cc-app", \
                f"{path} with Redis down: {r.status_code} {r.text[:300]}"
    for replica in REPLICAS:
        r = _readyz(w, replica)
        assert r.status_code == 200 and "store: unavailable" in r.text, f"{replica} /readyz: {r.status_code} {r.text}"
    # a login (its session must be indexed) and a logout (it must be heard everywhere) are 503 too
    from browserflow import Browser, cookie_header, idp_login, start_login

    for kind in ("store", "cookie"):
        start, callback, logout, _ = KINDS[kind]
        nb = Browser()
        start_login(w, nb, start)
        r = nb.go(idp_login(w, nb, nb.authorize_url, "bob", callback))
        assert r.status_code == 503, f"a {kind} login's callback with Redis down: {r.status_code} {r.text[:300]}"
        r = requests.post(w.url(logout), headers={"Origin": w.url("/").rstrip("/"), **SAME_ORIGIN, **XHR,
                                                  "Cookie": cookie_header(sessions[kind].session_cookies())},
                          allow_redirects=False, timeout=10)
        assert r.status_code == 503, f"a {kind} logout with Redis down: {r.status_code} {r.text[:300]}"

    # Redis back: the same sessions work again by themselves
    w.start("redis")
    for replica in REPLICAS:
        _wait(lambda replica=replica: "store: ok" in _readyz(w, replica).text, f"{replica} /readyz says store: ok")
    for kind, b in sessions.items():
        def served_on(replica: str, kind=kind, b=b) -> bool:
            r, who, _ = _probe(w, kind, b=b, headers=XHR)
            assert r.status_code in (200, 503), f"{kind} session on {who} with Redis back: {r.status_code} {r.text}"
            return r.status_code == 200 and who == replica

        for replica in REPLICAS:
            _wait(lambda replica=replica: served_on(replica),
                  f"the {kind} session answers 200 on {replica} with Redis back")
    assert {r: w.components[r].starts for r in REPLICAS} == starts, "no replica was restarted"
    # and a logout ends the session on both again
    copy = dict(sessions["store"].session_cookies())
    took = _logout(w, sessions["store"], "store")
    ended_at = time.monotonic()
    refused: set[str] = {took}
    late: list[tuple[str, float]] = []

    def refused_on_both() -> bool:
        r, who, sent = _probe(w, "store", cookies=copy, headers=XHR)
        if r.status_code == 200:
            late.append((who, round(sent - ended_at, 3)))
            assert who not in refused, f"the session was allowed on {who} after a logout it took or refused: {late}"
            return False
        assert r.status_code == 401, f"{who}: {r.status_code} {r.text[:300]}"
        refused.add(who)
        return refused == set(REPLICAS)

    _wait(refused_on_both, "the logged-out store session is refused on both replicas")
    print(f"with Redis back: logout through {took}; the copied cookie allowed {late}")
    assert all(t < 2.0 for _, t in late), f"allowed after the logout (at most 1 s): {late}"
