"""Browser login (authorization code + PKCE, encrypted session cookie, refresh, logout) through real Envoy and the
mock Okta IdP: client -> Envoy -> oidc-authz Check -> httpbin, the IdP's login form driven by hand.

The driver (`Browser`, `start_login`, `idp_login`, `finish_login`, `login`, `login_ok`) is tests/e2e/browserflow.py,
shared with the demo (scripts/demo.py): `login(world, user, start_path)` plays the browser with a `requests.Session`
and follows every redirect by hand (Envoy -> IdP authorize -> login form -> POST -> resume -> /oauth2/callback ->
the original URL). Every hop is recorded in `Browser.trace`; a driver step that gets an unexpected answer raises
`LoginFailed` (an AssertionError) with the whole trace, and `fail` below does the same for a test's own checks.

Policies (tests/e2e/oidc-authz.template.toml): `login` (/login/, /oauth2/ callback + logout; X-User = sub),
`group` (/group/, groups_required kong_group), `login_refresh` (/anything/login-refresh via [[routes]]; the session's
access token counts as expiring ~1 s after login).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from browserflow import (
    BROWSER, BROWSER_ACCEPT, LOGIN, SESSION, SESSION_RE, XHR_JSON, Browser, Hop, SetCookie, cookie_header,
    finish_login, form_fields, idp_login, login, login_ok, qs1, session_set_cookies, set_cookie, set_cookies, show,
    start_login, www_params,
)
from conftest import HTTP_TIMEOUT, World, jwt_claims

CLIENT_ID = "oidc-authz"
CLIENT_SECRET = "oidc-authz-secret"
CC_APP = ("cc-app", "cc-app-secret")


def assert_cookie_attrs(c: SetCookie, what: str) -> None:
    """Path=/; HttpOnly; SameSite=Lax; no Secure (the redirect_uri is http)."""
    assert c.attrs.get("path") == "/", f"{what}: Path=/ expected: {c.line}"
    assert c.has("httponly"), f"{what}: HttpOnly expected: {c.line}"
    assert c.attrs.get("samesite", "").lower() == "lax", f"{what}: SameSite=Lax expected: {c.line}"
    assert not c.has("secure"), f"{what}: no Secure on an http redirect_uri (a browser would drop it): {c.line}"


def fail(b: Browser, msg: str, r: requests.Response | None = None):
    pytest.fail(f"{msg}\n{show(r) if r is not None else ''}\n{b.describe()}", pytrace=False)


def echoed(resp: requests.Response) -> CaseInsensitiveDict:
    """Headers httpbin received."""
    assert resp.status_code == 200, f"expected httpbin's 200, got:\n{show(resp)}"
    try:
        return CaseInsensitiveDict(resp.json()["headers"])
    except (ValueError, KeyError):
        raise AssertionError(f"not httpbin's echo:\n{show(resp)}")


def bearer_upstream(resp: requests.Response) -> str:
    auth = echoed(resp).get("Authorization", "")
    assert auth.startswith("Bearer "), f"upstream Authorization is not a Bearer token: {auth!r}"
    return auth[len("Bearer "):]


# ---------------------------------------------------------------------------------------------------------------
# 1. browser without a session -> 302 to the IdP
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/login/headers", "/group/headers", "/anything/login-refresh/x"])
def test_browser_without_session_redirects_to_idp(authz: World, path: str):
    b = Browser()
    r = start_login(authz, b, path)
    loc = r.headers["Location"]
    q = qs1(loc)
    assert urlsplit(loc)._replace(query="").geturl() == authz.discovery()["authorization_endpoint"] \
        == f"{authz.issuer}/v1/authorize"
    assert q.get("response_type") == "code", q
    assert q.get("client_id") == CLIENT_ID, q
    assert q.get("redirect_uri") == authz.url("/oauth2/callback"), q
    assert "openid" in q.get("scope", "").split(" "), f"scope must be space-separated and hold openid: {q}"
    assert len(q.get("state", "")) >= 16, f"state missing or short: {q}"
    assert len(q.get("nonce", "")) >= 16, f"nonce missing or short: {q}"
    assert q.get("code_challenge_method") == "S256", q
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q.get("code_challenge", "")), \
        f"code_challenge is not base64url(SHA-256) without padding: {q.get('code_challenge')!r}"
    assert CLIENT_SECRET not in loc
    assert "no-store" in r.headers.get("cache-control", "").lower(), dict(r.headers)

    c = set_cookie(r, LOGIN)
    assert c is not None, f"no Set-Cookie {LOGIN}: {[x.line for x in set_cookies(r)]}"
    assert c.value, c.line
    assert c.attrs.get("max-age") == "300", f"{LOGIN} should live 300 s: {c.line}"
    assert_cookie_attrs(c, LOGIN)
    # nothing secret in clear in the cookie a browser keeps
    assert CLIENT_SECRET not in c.value


def test_each_login_start_has_fresh_state_nonce_and_pkce(authz: World):
    seen = [qs1(start_login(authz, Browser(), "/login/headers").headers["Location"]) for _ in range(3)]
    for k in ("state", "nonce", "code_challenge"):
        vals = [q[k] for q in seen]
        assert len(set(vals)) == 3, f"{k} repeats across logins: {vals}"


def test_idp_accepts_the_authorize_request(authz: World):
    """The 302's URL, taken as it is, gets the IdP's login form (not an error page or an error redirect)."""
    b = Browser()
    start_login(authz, b, "/login/headers")
    r = b.go(b.authorize_url)
    loc = r.headers.get("Location", "")
    if r.status_code != 303 or "/interaction/" not in loc:
        fail(b, "the IdP rejected oidc-authz's authorize request", r)


# ---------------------------------------------------------------------------------------------------------------
# 2. the callback
# ---------------------------------------------------------------------------------------------------------------
def test_login_lands_on_original_url_with_session(authz: World):
    start = "/login/anything/deep/path?a=1&b=two%20words"
    b, r = login(authz, "alice", start)
    cb = b.callback
    assert cb.headers["Location"] == start, f"callback must return to the original path+query: {cb.headers['Location']!r}"
    q = qs1(b.callback_url)
    assert q.get("iss") == authz.issuer, f"the IdP sends iss (RFC 9207): {b.callback_url}"
    assert "no-store" in cb.headers.get("cache-control", "").lower(), dict(cb.headers)

    sess = session_set_cookies(cb)
    live = [c for c in sess if not c.clears]  # clearing stale chunks (or the unsplit name) alongside is fine
    names = sorted(c.name for c in live)
    assert names == [SESSION] or names == sorted(f"{SESSION}_{i}" for i in range(len(names))), \
        f"session cookie names set: {names}"
    both = set(names) & {c.name for c in sess if c.clears}
    assert not both, f"cookies both set and cleared in one response: {sorted(both)}"
    for c in live:
        assert c.value, c.line
        assert_cookie_attrs(c, c.name)
        assert len(c.name) + 1 + len(c.value) <= 4096, \
            f"{c.name} is {len(c.value)} bytes: browsers drop cookies over 4096 bytes (split it)"
    cleared = set_cookie(cb, LOGIN)
    assert cleared is not None and cleared.clears and cleared.value == "", \
        f"callback must clear {LOGIN} (Max-Age=0): {cleared.line if cleared else None}"
    assert cleared.attrs.get("path") == "/", cleared.line
    assert LOGIN not in b.app_cookies()

    if r.status_code != 200:
        fail(b, "original URL after login", r)
    body = r.json()
    assert body["args"] == {"a": "1", "b": "two words"}, body
    assert body["url"].endswith("/anything/deep/path?a=1&b=two%20words") or body["url"].endswith(
        "/anything/deep/path?a=1&b=two words"), body["url"]
    assert echoed(r).get("X-User") == "alice"


def test_long_original_url_survives_login(authz: World):
    """The original URL rides in the login cookie: a query up to the 2 KB cap comes back whole, in one cookie."""
    start = "/login/anything/long?q=" + "x" * 1900 + "&end=1"
    b = Browser()
    r = start_login(authz, b, start)
    for c in set_cookies(r):
        assert len(c.name) + 1 + len(c.value) <= 4096, \
            f"{c.name} is {len(c.value)} bytes: browsers drop cookies over 4096 bytes"
    r = finish_login(authz, b, b.authorize_url, "alice")
    assert b.callback.headers["Location"] == start, f"came back to {b.callback.headers['Location'][:100]!r}..."
    assert r.status_code == 200 and r.json()["args"]["end"] == "1", show(r)


def test_huge_link_is_no_cookie_bomb(authz: World):
    """A link to /login/get?q=<20 KB>: one small login cookie (never chunks); after the login, the path alone."""
    start = "/login/get?q=" + "x" * 20_000
    b = Browser()
    r = start_login(authz, b, start)
    lines = set_cookies(r)
    assert [c.name for c in lines] == [LOGIN], f"one login cookie expected: {[c.line[:80] for c in lines]}"
    assert len(lines[0].line) < 4096, f"login cookie is {len(lines[0].line)} bytes"
    r = finish_login(authz, b, b.authorize_url, "alice")
    assert b.callback.headers["Location"] == "/login/get", b.callback.headers["Location"][:100]
    assert r.status_code == 200 and echoed(r).get("X-User") == "alice", show(r)


def test_session_cookie_is_opaque(authz: World):
    """The session cookie is encrypted: no token, no claim readable in it."""
    b, r = login_ok(authz)
    token = bearer_upstream(r)
    value = "".join(b.session_cookies().values())
    assert token not in value
    # a JWT's shape (header and payload both base64 of '{"', a dot between), not a lone "eyJ": ~5 000 characters of
    # random ciphertext hold "eyJ" about one time in fifty
    jwt = re.search(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.", value)
    assert jwt is None, "a JWT appears in the session cookie"
    for part in re.split(r"[.~|:]", value):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (ValueError, base64.binascii.Error):
            continue
        for word in (b"alice", b"refresh", b"access_token", b"api:read"):
            assert word not in raw, f"{word!r} readable in the session cookie"


def test_callback_with_wrong_state_is_401_html(authz: World):
    b = Browser()
    start_login(authz, b, "/login/headers")
    cb_url = idp_login(authz, b, b.authorize_url, "alice")
    q = qs1(cb_url)
    r = b.go(authz.url(f"/oauth2/callback?code={q['code']}&state=not-{q['state']}&iss={q['iss']}"))
    assert r.status_code == 401, show(r)
    assert "text/html" in r.headers.get("content-type", ""), show(r)
    assert not session_set_cookies(r) or all(c.clears for c in session_set_cookies(r)), show(r)
    assert "no-store" in r.headers.get("cache-control", "").lower(), dict(r.headers)


def test_callback_without_state_is_401_html(authz: World):
    b = Browser()
    start_login(authz, b, "/login/headers")
    cb_url = idp_login(authz, b, b.authorize_url, "alice")
    q = qs1(cb_url)
    r = b.go(authz.url(f"/oauth2/callback?code={q['code']}"))
    assert r.status_code == 401, show(r)
    assert "text/html" in r.headers.get("content-type", ""), show(r)
    assert not [c for c in session_set_cookies(r) if not c.clears], show(r)


def test_callback_without_login_cookie_is_401_html(authz: World):
    """A genuine code + state reaching a browser that did not start the login (lost cookie, or a forged link)."""
    b = Browser()
    start_login(authz, b, "/login/headers")
    cb_url = idp_login(authz, b, b.authorize_url, "alice")
    other = Browser()
    r = other.go(cb_url)
    assert r.status_code == 401, show(r)
    assert "text/html" in r.headers.get("content-type", ""), show(r)
    assert not other.session_cookies(), f"a session was set without the login cookie: {other.describe()}"


def test_callback_with_another_logins_cookie_is_401(authz: World):
    """Login CSRF: the victim's login cookie with the attacker's code + state (both genuine) is refused."""
    attacker, victim = Browser(), Browser()
    start_login(authz, attacker, "/login/headers")
    cb_url = idp_login(authz, attacker, attacker.authorize_url, "bob")
    start_login(authz, victim, "/login/headers")
    r = victim.go(cb_url)
    assert r.status_code == 401, show(r)
    assert not victim.session_cookies(), victim.describe()


def test_callback_replay_is_refused(authz: World):
    """The callback URL of a finished login, replayed: the login cookie is gone (and the code used)."""
    b, r = login_ok(authz)
    again = Browser()
    r = again.go(b.callback_url)
    assert r.status_code == 401, show(r)
    assert not again.session_cookies()
    # the same browser, whose login cookie was cleared by the first callback
    r = b.go(b.callback_url)
    assert r.status_code in (302, 401), show(r)
    if r.status_code == 302:  # an already-logged-in browser may just be sent on; never to somewhere else
        assert r.headers["Location"].startswith("/") and not r.headers["Location"].startswith("//"), show(r)


def test_idp_error_access_denied_is_401_html(authz: World):
    """The user cancels at the IdP: the IdP redirects back with error=access_denied&state=...."""
    b = Browser()
    start_login(authz, b, "/login/headers")
    r = b.go(b.authorize_url)
    assert r.status_code == 303 and "/interaction/" in r.headers["Location"], show(r)
    abort = urljoin(r.url, r.headers["Location"]) + "/abort"
    r = b.go(abort)  # 303 to the resume URL, which 303s to the redirect_uri with the error
    if r.status_code == 303 and "/v1/authorize/" in r.headers.get("Location", ""):
        r = b.go(urljoin(r.url, r.headers["Location"]))
    loc = r.headers.get("Location", "")
    assert r.status_code == 303 and loc.startswith(authz.url("/oauth2/callback?")), show(r)
    assert qs1(loc).get("error") == "access_denied", loc
    r = b.go(loc)
    assert r.status_code == 401, show(r)
    assert "text/html" in r.headers.get("content-type", ""), show(r)
    assert "access_denied" in r.text, f"the page should name the IdP's error code: {r.text[:500]!r}"
    assert "<script" not in r.text.lower()
    assert not [c for c in session_set_cookies(r) if not c.clears], show(r)


def test_idp_error_description_is_escaped(authz: World):
    """error/error_description come from the URL: the HTML page must escape them."""
    b = Browser()
    r = start_login(authz, b, "/login/headers")
    state = qs1(r.headers["Location"])["state"]
    evil = "<script>alert(1)</script>"
    r = b.go(authz.url("/oauth2/callback"), params={"error": "access_denied", "error_description": evil,
                                                     "state": state})
    assert r.status_code == 401, show(r)
    assert evil not in r.text, f"unescaped error_description in the page: {r.text[:500]!r}"


# ---------------------------------------------------------------------------------------------------------------
# 3. riding the session
# ---------------------------------------------------------------------------------------------------------------
def test_session_request_goes_upstream_with_bearer_and_claims(authz: World):
    b, r = login_ok(authz)
    b.cookies.set("theme", "dark", domain="127.0.0.1", path="/")
    r = b.go(authz.url("/login/headers"), headers={"X-User": "mallory"})
    h = echoed(r)
    assert h.get("X-User") == "alice", "X-User must be the session's sub (client copy replaced)"
    token = bearer_upstream(r)
    claims = jwt_claims(token)
    assert claims["sub"] == "alice" and claims["iss"] == authz.issuer, claims
    assert claims.get("cid") == CLIENT_ID, claims
    cookie = h.get("Cookie", "")
    names = [p.split("=", 1)[0].strip() for p in cookie.split(";") if p.strip()]
    assert not [n for n in names if SESSION_RE.match(n) or n == LOGIN], \
        f"oidc-authz cookies must not reach the upstream: {names}"
    assert "theme=dark" in [p.strip() for p in cookie.split(";")], f"other cookies must stay: {cookie!r}"


def test_session_works_for_xhr_too(authz: World):
    """A live session is a credential whatever the Accept header: an XHR with it is allowed."""
    b, _ = login_ok(authz)
    r = b.go(authz.url("/login/headers"), headers={**XHR_JSON, "X-Requested-With": "XMLHttpRequest"})
    assert echoed(r).get("X-User") == "alice"


def test_session_survives_authz_restart(authz: World):
    """The session lives in the encrypted cookie (session_secret from the config), not in oidc-authz's memory."""
    b, r = login_ok(authz)
    authz.stop("authz")
    authz.start("authz")  # same gRPC port: Envoy reconnects by itself
    r = b.go(authz.url("/login/headers"))
    if r.status_code != 200:
        fail(b, "session after an oidc-authz restart", r)
    assert echoed(r).get("X-User") == "alice"


def test_tampered_session_cookie_is_no_session(authz: World):
    b, _ = login_ok(authz)
    cookies = b.session_cookies()
    name = sorted(cookies)[0]
    v = cookies[name]
    i = len(v) // 2
    cookies[name] = v[:i] + ("A" if v[i] != "A" else "B") + v[i + 1:]
    hdr = {"Cookie": cookie_header(cookies)}
    r = requests.get(authz.url("/login/headers"), headers={**BROWSER, **hdr}, allow_redirects=False,
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{authz.issuer}/v1/authorize?"), show(r)
    r = requests.get(authz.url("/login/headers"), headers={**XHR_JSON, **hdr}, allow_redirects=False,
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 401, show(r)


def test_garbage_session_cookie_is_no_session(authz: World):
    """Garbage in the session cookie: treated as no session (302), never a 5xx."""
    for junk in ("x", "a" * 300, "v1.AAAA.BBBB", "%00%ff"):
        r = requests.get(authz.url("/login/headers"), headers={**BROWSER, "Cookie": f"{SESSION}={junk}"},
                         allow_redirects=False, timeout=HTTP_TIMEOUT)
        assert r.status_code == 302, f"{SESSION}={junk!r}: {show(r)}"


# ---------------------------------------------------------------------------------------------------------------
# 4. API / XHR without a session -> 401 with login_uri
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"Accept": "application/json"},
    {"Accept": "*/*"},
    {"Accept": BROWSER_ACCEPT, "X-Requested-With": "XMLHttpRequest"},
], ids=["json", "any", "xhr-header"])
def test_api_without_session_is_401_with_login_uri(authz: World, headers: dict):
    path = "/login/headers?x=1"
    r = requests.get(authz.url(path), headers=headers, allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401, show(r)
    www = r.headers.get("www-authenticate", "")
    assert www.startswith("Bearer "), www
    assert www_params(www) == {
        "realm": "login", "error": "invalid_token", "error_description": "login required",
        "login_uri": authz.url(path),
    }, www
    assert "no-store" in r.headers.get("cache-control", "").lower(), dict(r.headers)
    assert "application/json" in r.headers.get("content-type", ""), dict(r.headers)
    assert isinstance(r.json(), dict), r.text
    assert "Location" not in r.headers


def test_login_uri_ignores_a_spoofed_host(authz: World):
    """`Host: evil.com` (and X-Forwarded-Host) do not leak into login_uri: it is on the redirect_uri's origin."""
    path = "/login/headers?x=1"
    r = requests.get(authz.url(path), headers={**XHR_JSON, "Host": "evil.com", "X-Forwarded-Host": "evil.com"},
                     allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401, show(r)
    assert www_params(r.headers.get("www-authenticate", "")).get("login_uri") == authz.url(path), show(r)


# ---------------------------------------------------------------------------------------------------------------
# 5. a bearer token wins over a session
# ---------------------------------------------------------------------------------------------------------------
def test_bearer_token_wins_over_session(authz: World):
    b, _ = login_ok(authz)
    token = authz.idp_token(*CC_APP, scope="api:read")
    r = b.go(authz.url("/login/headers"), headers={"Authorization": f"Bearer {token}"})
    h = echoed(r)
    assert h.get("X-User") == "cc-app", h
    assert h.get("Authorization") == f"Bearer {token}"


# ---------------------------------------------------------------------------------------------------------------
# 6. group policy
# ---------------------------------------------------------------------------------------------------------------
def test_group_member_alice_is_allowed(authz: World):
    b, r = login_ok(authz, "alice", "/group/headers")
    claims = jwt_claims(bearer_upstream(r))
    assert claims["sub"] == "alice" and "kong_group" in claims.get("groups", []), claims


def test_group_non_member_bob_is_403(authz: World):
    b, r = login(authz, "bob", "/group/headers")
    if r.status_code != 403:
        fail(b, "bob is not in kong_group: 403 expected", r)
    assert "no-store" in r.headers.get("cache-control", "").lower(), dict(r.headers)
    body = r.json()
    assert body.get("error") == "insufficient_scope", body
    # no login loop: bob's session is valid, he is just not allowed
    assert b.session_cookies()
    r = b.go(authz.url("/group/headers"))
    assert r.status_code == 403, show(r)


# ---------------------------------------------------------------------------------------------------------------
# 7. refresh
# ---------------------------------------------------------------------------------------------------------------
REFRESH_PATH = "/anything/login-refresh/x"


def test_expiring_session_is_refreshed(authz: World):
    b, r = login_ok(authz, "alice", REFRESH_PATH)
    first = bearer_upstream(r)
    before = b.session_cookies()
    time.sleep(1.5)
    r = b.go(authz.url(REFRESH_PATH))
    if r.status_code != 200:
        fail(b, "request needing a refresh", r)
    assert session_set_cookies(r), f"a refresh must re-issue the session cookie: {show(r)}"
    for c in session_set_cookies(r):
        if not c.clears:
            assert_cookie_attrs(c, c.name)
    second = bearer_upstream(r)
    assert second != first, "the upstream token after the refresh is the old one"
    assert jwt_claims(second)["sub"] == "alice"
    assert jwt_claims(second)["iat"] >= jwt_claims(first)["iat"]
    assert b.session_cookies() != before
    # the re-issued cookie works
    r = b.go(authz.url(REFRESH_PATH))
    assert echoed(r).get("X-User") == "alice"


def test_expiring_session_is_refreshed_for_xhr(authz: World):
    b, r = login_ok(authz, "alice", REFRESH_PATH)
    first = bearer_upstream(r)
    time.sleep(1.5)
    r = b.go(authz.url(REFRESH_PATH), headers={**XHR_JSON, "X-Requested-With": "XMLHttpRequest"})
    assert bearer_upstream(r) != first
    assert session_set_cookies(r), show(r)


def idp_calls(world: World, endpoint: str, outcome: str = "ok") -> float:
    text = requests.get(f"http://127.0.0.1:{world.authz_admin_port}/metrics", timeout=HTTP_TIMEOUT).text
    m = re.search(rf'^oidc_authz_idp_requests_total\{{provider="okta",endpoint="{endpoint}",outcome="{outcome}"\}} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def test_concurrent_requests_needing_refresh_all_succeed(authz: World):
    """A page firing 30 requests at once with an expiring session: one refresh grant, every one allowed, all
    answering with the same new session cookie. However long the 30 take: requests still carrying the old cookie
    once the refreshed token itself counts as expiring (1 s later here) share the same refresh, not a second grant."""
    b, _ = login_ok(authz, "alice", REFRESH_PATH)
    hdr = {**XHR_JSON, "Cookie": cookie_header(b.session_cookies())}
    time.sleep(1.5)
    before = idp_calls(authz, "token")

    def one(i):
        return requests.get(authz.url(f"{REFRESH_PATH}?i={i}"), headers=hdr, allow_redirects=False,
                            timeout=HTTP_TIMEOUT)

    with ThreadPoolExecutor(30) as ex:
        rs = list(ex.map(one, range(30)))
    bad = [show(r, 200) for r in rs if r.status_code != 200]
    assert not bad, "\n".join(bad)
    assert all(echoed(r).get("X-User") == "alice" for r in rs)
    assert idp_calls(authz, "token") - before == 1, "30 requests on one session must make one refresh grant"
    cookies = {tuple(sorted((c.name, c.value) for c in session_set_cookies(r) if not c.clears)) for r in rs}
    assert len(cookies) == 1 and next(iter(cookies)), f"answers carry {len(cookies)} different session cookies"
    # a slow machine: more requests with the old cookie after the refreshed token counts as expiring too
    time.sleep(1.5)
    with ThreadPoolExecutor(5) as ex:
        late = list(ex.map(one, range(30, 35)))
    bad = [show(r, 200) for r in late if r.status_code != 200]
    assert not bad, "\n".join(bad)
    assert idp_calls(authz, "token") - before == 1, "the old cookie shares the one refresh however late it comes"
    late_cookies = {tuple(sorted((c.name, c.value) for c in session_set_cookies(r) if not c.clears)) for r in late}
    assert late_cookies == cookies, "late requests with the old cookie get the same refreshed session"


def test_failed_refresh_ends_the_session(authz: World):
    """The IdP restarts (new keys, every grant gone): the refresh fails, the session is over.

    oidc-authz refetches the JWKS at most every jwks_min_refetch_secs (5): the new login below makes it refetch,
    so oidc-authz is restarted at the end, or the next test rotating the IdP's keys within 5 s would see its
    refetch refused (tests/e2e/test_resilience.py does)."""
    try:
        _failed_refresh_ends_the_session(authz)
    finally:
        authz.stop("authz")
        authz.start("authz")


def _failed_refresh_ends_the_session(authz: World):
    b, r = login_ok(authz, "alice", REFRESH_PATH)
    cookies = {"Cookie": cookie_header(b.session_cookies())}
    authz.stop("idp")
    authz.start("idp")  # same port and issuer, new signing keys, no grants
    time.sleep(1.5)
    r = requests.get(authz.url(REFRESH_PATH), headers={**XHR_JSON, **cookies}, allow_redirects=False,
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 401, f"XHR after a failed refresh: {show(r)}"
    assert www_params(r.headers.get("www-authenticate", "")).get("login_uri") == authz.url(REFRESH_PATH), show(r)
    r = requests.get(authz.url(REFRESH_PATH), headers={**BROWSER, **cookies}, allow_redirects=False,
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{authz.issuer}/v1/authorize?"), \
        f"browser after a failed refresh: {show(r)}"
    # and a new login works against the restarted IdP (its ID token is signed by a key oidc-authz has not seen)
    b2, r = login_ok(authz, "alice", REFRESH_PATH)
    assert echoed(r).get("X-User") == "alice"


# ---------------------------------------------------------------------------------------------------------------
# 8. logout
# ---------------------------------------------------------------------------------------------------------------
def test_logout_ends_session_and_idp_session(authz: World):
    b, r = login_ok(authz)
    had = set(b.session_cookies())
    r = b.post(authz.url("/oauth2/logout"))
    if r.status_code != 302:
        fail(b, "logout with a session", r)
    loc = r.headers["Location"]
    end_session = authz.discovery()["end_session_endpoint"]
    assert end_session == f"{authz.issuer}/v1/logout"
    assert loc.startswith(end_session + "?"), loc
    q = qs1(loc)
    assert q.get("post_logout_redirect_uri") == authz.url("/public/get"), q
    hint = q.get("id_token_hint", "")
    claims = jwt_claims(hint)
    assert claims["sub"] == "alice" and claims["aud"] in (CLIENT_ID, [CLIENT_ID]) and claims["iss"] == authz.issuer, \
        f"id_token_hint is not alice's ID token: {claims}"
    cleared = {c.name for c in session_set_cookies(r) if c.clears}
    assert had <= cleared, f"logout must clear every session cookie {sorted(had)}; cleared {sorted(cleared)}"
    for c in session_set_cookies(r):
        assert c.attrs.get("path") == "/", c.line
    assert not b.session_cookies()
    assert "no-store" in r.headers.get("cache-control", "").lower(), dict(r.headers)

    # the browser has no session any more
    r2 = b.go(authz.url("/login/headers"))
    assert r2.status_code == 302 and r2.headers["Location"].startswith(f"{authz.issuer}/v1/authorize?"), show(r2)

    # the IdP's logout page: one form (auto-submitted by script in a browser), confirm it
    r = b.go(loc)
    if r.status_code != 200:
        fail(b, "IdP logout page", r)
    action, fields = form_fields(r.text)
    assert fields.get("logout") == "yes" and fields.get("xsrf"), fields
    r = b.post(urljoin(r.url, action), data=fields)
    if r.status_code != 303:
        fail(b, "IdP logout confirm", r)
    landing = urljoin(r.url, r.headers["Location"])
    assert urlsplit(landing)._replace(query="").geturl() == authz.url("/public/get"), landing
    r = b.go(landing)
    assert r.status_code == 200 and r.json()["url"].split("?")[0].endswith("/get"), show(r)

    # the IdP session is over too: the next login shows the login form again
    b.saw_login_form = False
    b, r = login(authz, "alice", "/login/headers", b=b)
    assert r.status_code == 200, show(r)
    assert b.saw_login_form, f"after logout the IdP should ask for the login again\n{b.describe()}"


def test_logout_without_session_goes_to_post_logout_uri(authz: World):
    b = Browser()
    r = b.post(authz.url("/oauth2/logout"))
    assert r.status_code == 302, show(r)
    assert r.headers["Location"] == authz.url("/public/get"), show(r)


def test_logout_clears_cookies_even_for_xhr(authz: World):
    b, _ = login_ok(authz)
    had = set(b.session_cookies())
    r = b.delete(authz.url("/oauth2/logout"), headers=XHR_JSON)
    assert r.status_code in (200, 204, 302, 401), show(r)
    cleared = {c.name for c in session_set_cookies(r) if c.clears}
    assert had <= cleared, f"{sorted(had)} not cleared by an XHR logout: {show(r)}"


SESSION_SECRET = "UePTBxfdBegqNEpqNNov35u26T1aGX35JU71DtqTevA="  # tests/e2e/oidc-authz.template.toml
OPEN_COOKIE_JS = r"""
const crypto = require('crypto');
const [secret, name, value] = process.argv.slice(1);
const raw = Buffer.from(value, 'base64url');
const d = crypto.createDecipheriv('aes-256-gcm', Buffer.from(secret, 'base64'), raw.subarray(0, 12));
d.setAAD(Buffer.from(name));
d.setAuthTag(raw.subarray(raw.length - 16));
process.stdout.write(Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]));
"""


def open_session(b: Browser) -> dict:
    """The session cookie's content, opened with the e2e session secret (node's AES-256-GCM)."""
    cookies = b.session_cookies()
    value = cookies.get(SESSION) or "".join(cookies[f"{SESSION}_{i}"] for i in range(len(cookies)))
    p = subprocess.run(["node", "-e", OPEN_COOKIE_JS, SESSION_SECRET, SESSION, value], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def introspect_at_idp(world: World, token: str) -> dict:
    r = requests.post(world.discovery()["introspection_endpoint"], data={"token": token},
                      auth=(CLIENT_ID, CLIENT_SECRET), timeout=HTTP_TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("headers", [{}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-origin"}],
                         ids=["plain", "cross-site", "same-origin"])
def test_get_logout_is_refused_by_default(authz: World, headers: dict):
    """`login` takes the default logout_methods (POST, DELETE): a GET (any link, image or iframe) logs nobody out."""
    b, _ = login_ok(authz)
    r = b.go(authz.url("/oauth2/logout"), headers=headers)
    assert r.status_code == 403, show(r)
    assert r.json().get("error") == "access_denied", show(r)
    assert not [c for c in session_set_cookies(r) if c.clears], show(r)
    assert b.go(authz.url("/login/headers")).status_code == 200, "the session survives a refused logout"


def test_cross_site_post_logout_is_refused(authz: World):
    b, _ = login_ok(authz)
    for hdr in ({"Origin": "http://evil.example.com"}, {"Sec-Fetch-Site": "cross-site"}):
        r = b.post(authz.url("/oauth2/logout"), headers=hdr)
        assert r.status_code == 403, f"{hdr}: {show(r)}"
    assert b.go(authz.url("/login/headers")).status_code == 200


def test_logout_revokes_refresh_token_and_kills_copied_cookie(authz: World):
    b, _ = login_ok(authz)
    copy = dict(b.session_cookies())
    rt = open_session(b)["rt"]
    assert rt and introspect_at_idp(authz, rt).get("active") is True, "the session's refresh token is live"
    r = b.post(authz.url("/oauth2/logout"), headers={"Origin": authz.url("/").rstrip("/"),
                                                     "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 302, show(r)
    assert introspect_at_idp(authz, rt).get("active") is False, "logout must revoke the refresh token at the IdP"
    # the cookie copied before the logout is dead: browser -> login (cookie cleared), API -> 401
    hdr = {"Cookie": cookie_header(copy)}
    r = requests.get(authz.url("/login/headers"), headers={**BROWSER, **hdr}, allow_redirects=False,
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{authz.issuer}/v1/authorize?"), show(r)
    assert {c.name for c in session_set_cookies(r) if c.clears} >= set(copy), show(r)
    r = requests.get(authz.url("/login/headers"), headers={**XHR_JSON, **hdr}, allow_redirects=False,
                     timeout=HTTP_TIMEOUT)
    assert r.status_code == 401, show(r)


def test_get_logout_when_listed_is_same_origin_only(authz: World):
    """`login_getout` lists GET: a same-origin navigation logs out, a cross-site one (or one without
    Sec-Fetch-Site) is refused."""
    b, _ = login_ok(authz, "alice", "/anything/getout/x")
    for hdr in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {}):
        r = b.go(authz.url("/anything/getout/logout"), headers=hdr)
        assert r.status_code == 403, f"{hdr}: {show(r)}"
    assert b.go(authz.url("/anything/getout/x")).status_code == 200
    r = b.go(authz.url("/anything/getout/logout"), headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 302 and r.headers["Location"].startswith(authz.discovery()["end_session_endpoint"]), \
        show(r)
    assert not b.session_cookies()
    r = b.go(authz.url("/anything/getout/x"))
    assert r.status_code == 302 and r.headers["Location"].startswith(f"{authz.issuer}/v1/authorize?"), show(r)


# ---------------------------------------------------------------------------------------------------------------
# 9. open redirects
# ---------------------------------------------------------------------------------------------------------------
def raw_get(world: World, b: Browser, path: str) -> tuple[int, dict[str, str], list[str]]:
    """GET with the path sent byte for byte (requests would re-quote a backslash), cookies from the jar; the
    Set-Cookie lines go into the jar. (status, headers, Set-Cookie lines)"""
    conn = http.client.HTTPConnection("127.0.0.1", world.envoy_port, timeout=HTTP_TIMEOUT)
    try:
        hdrs = {**BROWSER}
        jar = b.app_cookies()
        if jar:
            hdrs["Cookie"] = cookie_header(jar)
        conn.request("GET", path, headers=hdrs)
        resp = conn.getresponse()
        resp.read()
        lines = resp.headers.get_all("Set-Cookie") or []
        for line in lines:
            first, *rest = line.split(";")
            name, _, value = first.strip().partition("=")
            if any(a.strip().lower() in ("max-age=0", "max-age=-1") for a in rest):
                b.cookies.set(name, None, domain="127.0.0.1", path="/")
            else:
                b.cookies.set(name, value, domain="127.0.0.1", path="/")
        b.trace.append(Hop("GET(raw)", path, resp.status, resp.headers.get("Location"), [ln[:60] for ln in lines]))
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, lines
    finally:
        conn.close()


EVIL_PATHS = [
    "//evil.example.com/x",
    "/\\evil.example.com",
    "/\\/evil.example.com/x",
    "/login//evil.example.com/x",
    "/login/\\evil.example.com/x",
    "/login/%2F%2Fevil.example.com/x",
    "/login/%5Cevil.example.com",
    "/login/..//evil.example.com",
    "/login/x/..//..//evil.example.com/x",
    "/oauth2/..//evil.example.com",
    "/anything/login-refresh//evil.example.com/x",
    "/login/headers?next=//evil.example.com",
    "/login/headers?next=https://evil.example.com/",
]


def test_no_open_redirect_after_login(authz: World):
    app_origin = f"127.0.0.1:{authz.envoy_port}"
    idp_origin = urlsplit(authz.issuer).netloc
    logged_in = []
    for path in EVIL_PATHS:
        b = Browser()
        cur = path
        for _ in range(4):  # Envoy's own redirects (UNESCAPE_AND_REDIRECT) first
            status, hdrs, _ = raw_get(authz, b, cur)
            loc = hdrs.get("location")
            if status in (301, 302, 303, 307, 308) and loc:
                target = urlsplit(urljoin(authz.url("/"), loc))
                assert target.netloc in (app_origin, idp_origin), \
                    f"{path!r}: redirect off-origin to {loc!r}\n{b.describe()}"
                if target.netloc == app_origin:
                    assert not loc.startswith("//") and not loc.startswith("/\\"), f"{path!r}: Location {loc!r}"
                    cur = target.path + (f"?{target.query}" if target.query else "")
                    continue
            break
        if not (status == 302 and loc and loc.startswith(f"{authz.issuer}/v1/authorize?")):
            continue  # Envoy or oidc-authz refused the path (403/400/404): no login, no redirect to follow
        b.authorize_url = loc
        r = finish_login(authz, b, loc, "alice")  # asserts the callback's Location is a path on this origin
        back = b.callback.headers["Location"]
        assert back.startswith("/") and not back.startswith("//") and "\\" not in back.split("?")[0], \
            f"{path!r}: callback Location {back!r}"
        assert urlsplit(urljoin(authz.url("/"), back)).netloc == app_origin, back
        logged_in.append((path, back, r.status_code))
    # the check is empty unless some of the paths reached a login
    assert len(logged_in) >= 3, f"too few evil paths reached a login: {logged_in}"
    print("open-redirect paths that logged in:", logged_in)



# ---------------------------------------------------------------------------------------------------------------
# OpenID Connect Back-Channel Logout
# ---------------------------------------------------------------------------------------------------------------
def _end_idp_session(world: World, b) -> None:
    """End the user's session at the IdP itself (its own logout page, confirmed), not through oidc-authz: the IdP
    then POSTs a logout token to every client of that session, oidc-authz's back-channel logout path included."""
    r = b.go(world.discovery()["end_session_endpoint"])
    if r.status_code != 200:
        fail(b, "IdP logout page", r)
    action, fields = form_fields(r.text)
    r = b.post(urljoin(r.url, action), data=fields)
    if r.status_code not in (200, 303):
        fail(b, "IdP logout confirm", r)


def test_backchannel_logout_from_the_idp_ends_the_session(authz: World):
    b, _ = login_ok(authz)
    assert b.go(authz.url("/login/headers")).status_code == 200
    _end_idp_session(authz, b)
    # the logout token reached oidc-authz through Envoy: the session cookie the browser still has is no session
    deadline = time.monotonic() + 30
    while True:
        r = b.go(authz.url("/login/headers"))
        if r.status_code == 302:
            break
        assert r.status_code == 200 and time.monotonic() < deadline, show(r)
        time.sleep(0.2)
    assert r.headers["Location"].startswith(f"{authz.issuer}/v1/authorize?"), show(r)


@pytest.mark.parametrize("body", ["", "logout_token=not-a-jwt", "logout_token=a.b.c&logout_token=d.e.f"])
def test_a_bad_logout_token_is_400_and_goes_nowhere(authz: World, body: str):
    marker = f"bcl-{time.monotonic_ns()}"
    r = requests.post(authz.url(f"/oauth2/backchannel-logout?probe={marker}"), data=body, timeout=HTTP_TIMEOUT,
                      headers={"Content-Type": "application/x-www-form-urlencoded"}, allow_redirects=False)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert "no-store" in r.headers.get("cache-control", "")
    # the log does show what reaches httpbin (a control request through the public route, sent after ours)
    control = f"bcl-control-{time.monotonic_ns()}"
    assert authz.get(f"/public/get?probe={control}").status_code == 200
    deadline = time.monotonic() + 30
    while control not in authz.httpbin_log():
        assert time.monotonic() < deadline, "the control request never showed in httpbin's log"
        time.sleep(0.1)
    assert marker not in authz.httpbin_log(), "a back-channel logout request must never reach the upstream"
