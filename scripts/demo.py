#!/usr/bin/env python3
"""The oidc-authz demo: Envoy -> oidc-authz (ext_authz gRPC) -> httpbin, with a mock Okta IdP, all on loopback.

Run it with `bash scripts/demo.sh` (installs, builds, then runs this with the .venv's python), or directly:

    .venv/bin/python scripts/demo.py                 # start, walk the tutorial steps, keep running until Ctrl-C
    .venv/bin/python scripts/demo.py --no-wait       # walk the steps and stop; exit 1 if any answer is unexpected
    .venv/bin/python scripts/demo.py --random-ports  # free ports instead of 8080/9901/9191/9192/8000/9000
    .venv/bin/python scripts/demo.py --replicas 2    # two oidc-authz replicas sharing a real Redis (redis-server)

The world (processes, rendered configs) is tests/e2e/world.py, the same as the e2e suite's; the oidc-authz policy
set is tests/e2e/oidc-authz.template.toml, Envoy's routes envoy/envoy.template.yaml. Every status printed comes
from a real request through Envoy (or to the mock IdP); nothing is faked. The browser login steps are played by the
e2e suite's login driver (tests/e2e/browserflow.py, the same one tests/e2e/test_login.py uses): a `requests`
session that follows every redirect and fills in the mock Okta's login form.

Binary: $OIDC_AUTHZ_BIN, else target/release/oidc-authz. Logs and configs: --run-dir (default .demo/).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import requests  # noqa: E402  (the .venv has it)
from browserflow import (  # noqa: E402
    SESSION_RE, Browser, Hop, LoginFailed, login, qs1, session_set_cookies, set_cookie, set_cookies,
    www_params,
)
from world import (  # noqa: E402
    HTTP_TIMEOUT, ReplicaWorld, StartError, Unavailable, World, authz_binary, jwt_claims, port_free, tail,
)

# the README's addresses: what `make demo` listens on when the ports are free
DEMO_PORTS = {"envoy": 8080, "envoy_admin": 9901, "grpc": 9191, "authz_admin": 9192, "httpbin": 8000, "idp": 9000}
PORT_ROLE = {"envoy": "Envoy listener", "envoy_admin": "Envoy admin", "grpc": "oidc-authz gRPC",
             "authz_admin": "oidc-authz admin", "httpbin": "httpbin", "idp": "mock Okta IdP"}
START_ORDER = [("httpbin", "httpbin (the upstream)"), ("idp", "mock Okta IdP (oidc-provider)"),
               ("authz", "oidc-authz"), ("envoy", "Envoy")]
# run-dir files this script (re)writes; only these are removed at start
RUN_FILES = ("httpbin.log", "envoy.log", "idp.log", "oidc-authz.log", "envoy.yaml", "oidc-authz.toml",
             "gunicorn.conf.py", "oidc-authz-b.log", "redis.log", "oidc-authz-a.toml", "oidc-authz-b.toml")
# --replicas 2: Redis first, then both replicas
REPLICA_START_ORDER = [("httpbin", "httpbin (the upstream)"), ("idp", "mock Okta IdP (oidc-provider)"),
                       ("redis", "Redis (redis-server)"), ("authz", "oidc-authz replica A"),
                       ("authz_b", "oidc-authz replica B"), ("envoy", "Envoy")]

CC_APP = ("cc-app", "cc-app-secret")
CC_READONLY = ("cc-readonly", "cc-readonly-secret")


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _on_signal(signum, frame):
    raise Stop(signal.Signals(signum).name)


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------------------------
# the walk
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Check:
    title: str
    got: int | None
    expected: int
    problem: str | None = None      # the status is right but the answer is not (e.g. a spoofed header got through)

    @property
    def ok(self) -> bool:
        return not self.problem and self.got == self.expected


@dataclass
class Walk:
    world: World
    checks: list[Check] = field(default_factory=list)
    n: int = 0
    total: int = 0

    # ---- printing --------------------------------------------------------------------------------------------
    def title(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {text}")

    @staticmethod
    def cmd(line: str) -> None:
        print(f"  $ {line}")

    @staticmethod
    def act(line: str) -> None:
        """What the (scripted) browser does, where no single curl says it."""
        print(f"  > {line}")

    @staticmethod
    def note(text: str) -> None:
        for i, line in enumerate(text.splitlines()):
            print(("    " if i == 0 else "      ") + line)

    def verdict(self, what: str, r: requests.Response | None, expected: int, problem: str | None = None) -> Check:
        c = Check(what, r.status_code if r is not None else None, expected, problem)
        self.checks.append(c)
        status = f"{r.status_code} {r.reason}" if r is not None else "no answer"
        if problem:
            mark = f"UNEXPECTED: {problem}"
        else:
            mark = "ok" if c.ok else f"UNEXPECTED: expected {expected}"
        print(f"  => {status:<24} [{mark}]")
        return c

    @staticmethod
    def deny_details(r: requests.Response) -> None:
        www = r.headers.get("www-authenticate")
        if www:
            Walk.note(f"WWW-Authenticate: {www}")
        try:
            body = r.json()
            Walk.note(f"body: {json.dumps(body, separators=(',', ':'))}")
        except ValueError:
            if r.text:
                Walk.note(f"body: {r.text[:200]}")

    @staticmethod
    def echoed(r: requests.Response, names: list[str]) -> None:
        """What httpbin says reached it."""
        try:
            got = {k.lower(): v for k, v in r.json()["headers"].items()}
        except (ValueError, KeyError, TypeError):
            Walk.note(f"(not httpbin's echo: {r.text[:200]})")
            return
        lines = [f"{n}: {short(got[n.lower()]) if n.lower() in got else '(absent)'}" for n in names]
        Walk.note("httpbin received:\n" + "\n".join(lines))

    # ---- requests --------------------------------------------------------------------------------------------
    def through_envoy(self, path: str, headers: dict | None = None) -> requests.Response | None:
        try:
            return self.world.get(path, headers=headers)
        except requests.RequestException as e:
            self.note(f"request failed: {e}")
            return None

    def idp_token(self, client: tuple[str, str], scope: str | None, resource: str | None = None,
                  var: str = "TOKEN") -> str | None:
        """Client-credentials grant at the mock Okta's token endpoint, shown as curl; None when it fails."""
        w = self.world
        endpoint = f"{w.issuer}/v1/token"
        args = f"-u {client[0]}:{client[1]} -d grant_type=client_credentials"
        args += f" -d scope={scope}" if scope else ""
        args += f" -d resource={resource}" if resource else ""
        self.cmd(f"{var}=$(curl -s {args} {endpoint} | jq -r .access_token)")
        data = {"grant_type": "client_credentials"}
        if scope:
            data["scope"] = scope
        if resource:
            data["resource"] = resource
        try:
            r = requests.post(endpoint, data=data, auth=client, timeout=HTTP_TIMEOUT)
        except requests.RequestException as e:
            self.note(f"request failed: {e}")
            r = None
        c = Check(f"token for {client[0]}", r.status_code if r is not None else None, 200)
        self.checks.append(c)
        if r is None or r.status_code != 200:
            self.note(f"mock Okta answered {r.status_code if r is not None else 'nothing'}: "
                      f"{r.text[:200] if r is not None else ''}   [UNEXPECTED: expected 200]")
            return None
        token = r.json()["access_token"]
        try:
            cl = jwt_claims(token)
            aud = cl.get("aud")
            self.note(f"mock Okta: 200, a JWT access token: sub={cl.get('sub')} cid={cl.get('cid')} "
                      f"scp={json.dumps(cl.get('scp'))} aud={aud} expires in {cl['exp'] - int(time.time())}s")
        except (ValueError, KeyError):
            self.note(f"mock Okta: 200, an opaque access token ({len(token)} chars, "
                      f"scope \"{r.json().get('scope')}\", expires in {r.json().get('expires_in')}s)")
        return token

    # ---- the steps (Kong's OpenID Connect tutorials, through Envoy) ------------------------------------------
    def run(self) -> None:
        w = self.world
        base = w.url("")
        self.total = 15

        self.title("a public route: no token needed (ext_authz is off on /public/)")
        self.cmd(f"curl -i {base}/public/get")
        r = self.through_envoy("/public/get")
        self.verdict("public", r, 200)
        if r is not None and r.status_code == 200:
            self.note(f"httpbin answered for {r.json().get('url')}")

        self.title("the API without a token")
        self.cmd(f"curl -i {base}/api/headers")
        r = self.through_envoy("/api/headers")
        self.verdict("api without token", r, 401)
        if r is not None:
            self.deny_details(r)

        self.title("a client-credentials token from the mock Okta (cc-app), then the API with it")
        token = self.idp_token(CC_APP, "api:read")
        self.cmd(f'curl -i -H "Authorization: Bearer $TOKEN" {base}/api/headers')
        r = self.through_envoy("/api/headers", {"Authorization": f"Bearer {token}"}) if token else None
        self.verdict("api with token", r, 200)
        if r is not None and r.status_code == 200:
            self.echoed(r, ["X-Issuer", "X-User", "X-Client-Id", "Authorization"])
            self.note("(X-Issuer, X-User, X-Client-Id come from the verified token's iss, sub, cid claims)")

        self.title("a spoofed X-User header is overwritten")
        self.cmd(f'curl -i -H "Authorization: Bearer $TOKEN" -H "X-User: attacker" {base}/api/headers')
        r = (self.through_envoy("/api/headers", {"Authorization": f"Bearer {token}", "X-User": "attacker"})
             if token else None)
        spoofed = None
        if r is not None and r.status_code == 200 and r.json().get("headers", {}).get("X-User") != "cc-app":
            spoofed = "the upstream did not get X-User: cc-app"
        self.verdict("spoofed X-User", r, 200, problem=spoofed)
        if r is not None and r.status_code == 200:
            self.echoed(r, ["X-User"])

        self.title("a token without the api:read scope (cc-readonly)")
        ro = self.idp_token(CC_READONLY, None, var="RO_TOKEN")
        self.cmd(f'curl -i -H "Authorization: Bearer $RO_TOKEN" {base}/api/headers')
        r = self.through_envoy("/api/headers", {"Authorization": f"Bearer {ro}"}) if ro else None
        self.verdict("insufficient scope", r, 403)
        if r is not None:
            self.deny_details(r)

        self.title("a garbage token")
        self.cmd(f'curl -i -H "Authorization: Bearer not-a-jwt" {base}/api/headers')
        r = self.through_envoy("/api/headers", {"Authorization": "Bearer not-a-jwt"})
        self.verdict("garbage token", r, 401)
        if r is not None:
            self.deny_details(r)

        self.title("the seed route: client id and secret at the gateway (Basic), a token upstream")
        self.cmd(f"curl -i -u cc-app:cc-app-secret {base}/oidcroute/get")
        basic = base64.b64encode(b"cc-app:cc-app-secret").decode()
        r = self.through_envoy("/oidcroute/get", {"Authorization": f"Basic {basic}"})
        self.verdict("client_credentials", r, 200)
        if r is not None and r.status_code == 200:
            self.echoed(r, ["Authorization", "Issuer-Header"])
            self.note("oidc-authz ran the client-credentials grant at the mock Okta, cached the token, and sent it upstream")
        elif r is not None:
            self.deny_details(r)

        self.title("the seed route with a wrong secret")
        self.cmd(f"curl -i -u cc-app:wrong {base}/oidcroute/get")
        wrong = base64.b64encode(b"cc-app:wrong").decode()
        r = self.through_envoy("/oidcroute/get", {"Authorization": f"Basic {wrong}"})
        self.verdict("client_credentials, wrong secret", r, 401)
        if r is not None:
            self.deny_details(r)

        self.title("an opaque token checked by RFC 7662 introspection (caching off on this route)")
        op = self.idp_token(CC_APP, None, resource="api://opaque", var="OPAQUE")
        self.cmd(f'curl -i -H "Authorization: Bearer $OPAQUE" {base}/introspect/headers')
        r = self.through_envoy("/introspect/headers", {"Authorization": f"Bearer {op}"}) if op else None
        self.verdict("introspection", r, 200)
        if r is not None and r.status_code == 200:
            self.echoed(r, ["X-User", "X-Client-Id"])
        elif r is not None:
            self.deny_details(r)

        self.title("revoke that token at the IdP (RFC 7009), then use it again")
        revocation = f"{w.issuer}/v1/revoke"
        self.cmd(f"curl -s -u cc-app:cc-app-secret -d token=$OPAQUE {revocation}")
        if op:
            requests.post(revocation, data={"token": op}, auth=CC_APP, timeout=10)
        self.cmd(f'curl -i -H "Authorization: Bearer $OPAQUE" {base}/introspect/headers')
        r = self.through_envoy("/introspect/headers", {"Authorization": f"Bearer {op}"}) if op else None
        self.verdict("introspection after revocation", r, 401)
        if r is not None:
            self.deny_details(r)

        self.login_steps()

    # ---- browser login (authorization code + PKCE, session cookie), Kong's tutorial parts 3 and 4 -----------
    def login_steps(self) -> None:
        w = self.world
        base = w.url("")
        authorize = w.discovery()["authorization_endpoint"]

        self.title("browser login, 1: a browser without a session is sent to the mock Okta")
        self.cmd(f'curl -i -H "Accept: text/html" {base}/login/headers')
        r = self.through_envoy("/login/headers", {"Accept": "text/html"})
        problem = None
        if r is not None and r.status_code == 302:
            loc = r.headers.get("location", "")
            q = qs1(loc)
            if not loc.startswith(authorize + "?"):
                problem = f"not sent to the authorization endpoint {authorize}"
            elif not (q.get("state") and q.get("nonce") and q.get("code_challenge")
                      and q.get("code_challenge_method") == "S256"):
                problem = "state, nonce or code_challenge (S256) missing"
        self.verdict("browser without session", r, 302, problem=problem)
        if r is not None and r.status_code == 302:
            loc = r.headers.get("location", "")
            q = qs1(loc)
            self.note(f"Location: {short(loc, 110)}")
            self.note(f"  to {urlsplit(loc)._replace(query='').geturl()}, the mock Okta's authorization endpoint, with\n"
                      f"  response_type={q.get('response_type')} client_id={q.get('client_id')} "
                      f"scope=\"{q.get('scope')}\"\n"
                      f"  redirect_uri={q.get('redirect_uri')}\n"
                      f"  state={clip(q.get('state', ''), 12)} nonce={clip(q.get('nonce', ''), 12)}: random "
                      f"({len(q.get('state', ''))}/{len(q.get('nonce', ''))} chars), fresh per login, "
                      f"checked at the callback\n"
                      f"  code_challenge={clip(q.get('code_challenge', ''), 12)} "
                      f"code_challenge_method={q.get('code_challenge_method')}: PKCE (its verifier goes to the "
                      f"token endpoint with the code)")
            c = set_cookie(r, "oidc_authz_login")
            if c is not None:
                self.note(f"Set-Cookie: oidc_authz_login ({len(c.value)} bytes, Max-Age={c.attrs.get('max-age')}): "
                          f"state, nonce, PKCE verifier and the path to\nreturn to, encrypted")
        elif r is not None:
            self.deny_details(r)

        self.title("browser login, 2: an API call (no text/html) without a session gets 401 and where to log in")
        self.cmd(f'curl -i -H "Accept: application/json" {base}/login/headers')
        r = self.through_envoy("/login/headers", {"Accept": "application/json"})
        problem = None
        if r is not None and r.status_code == 401:
            got = www_params(r.headers.get("www-authenticate", "")).get("login_uri")
            if got != f"{base}/login/headers":
                problem = f"login_uri is {got!r}, not {base}/login/headers"
        self.verdict("api without session", r, 401, problem=problem)
        if r is not None:
            self.deny_details(r)
        self.note("(no redirect an XHR could not follow: a page sends the browser to login_uri instead)")

        self.title("browser login, 3: alice logs in (a scripted browser: the e2e suite's login driver)")
        self.act(f"a browser opens {base}/login/headers, follows the redirects, and logs in at the mock Okta's form "
                 f"as alice (any password)")
        alice = Browser()
        r = self.scripted_login(alice, "alice", "/login/headers")
        problem = None
        if r is not None and r.status_code == 200:
            got = self.echo_headers(r)
            if got.get("x-user") != "alice":
                problem = f"the upstream got X-User {got.get('x-user')!r}, not alice"
            elif not got.get("authorization", "").startswith("Bearer "):
                problem = "the upstream got no Authorization: Bearer"
            elif [n for n in cookie_names(got.get("cookie", "")) if SESSION_RE.match(n)]:
                problem = "the session cookie reached the upstream"
        self.verdict("login as alice", r, 200, problem=problem)
        if r is not None and r.status_code == 200:
            self.echoed(r, ["X-User", "Authorization"])
            sent = alice.session_cookies()
            got = cookie_names(self.echo_headers(r).get("cookie", ""))
            self.note("(X-User is the session's sub; Authorization carries the session's access token)")
            self.note(f"the browser sent {', '.join(f'{n} ({len(v)} bytes, sealed)' for n, v in sent.items())}: "
                      f"oidc-authz removed it, httpbin's Cookie header\nhad only "
                      + (", ".join(got) if got else "nothing")
                      + (" (the mock Okta's own cookie: same host, and cookies ignore ports)"
                         if got == ["_session"] else ""))
            self.note(f"(the curl commands below write that cookie's value as "
                      f"${self.cookie_arg(alice).split('$', 1)[1].split(';')[0]})")
        elif r is not None:
            self.deny_details(r)

        self.title("browser login, 4: Kong's tutorial part 4, the group route (groups_required = kong_group)")
        jar = self.cookie_arg(alice)
        self.cmd(f'curl -i -b "{jar}" {base}/group/headers   # alice\'s session cookie from step {self.n - 1}')
        r = self.browser_get(alice, "/group/headers") if alice.session_cookies() else None
        self.verdict("group route, alice", r, 200)
        if r is not None and r.status_code == 200:
            try:
                groups = jwt_claims(self.echo_headers(r).get("authorization", "")[len("Bearer "):]).get("groups")
                self.note(f"groups in alice's access token: {', '.join(groups or [])}")
            except (ValueError, KeyError, TypeError):
                pass
        elif r is not None:
            self.deny_details(r)
        self.act(f"bob logs in the same way, starting at {base}/group/headers")
        bob = Browser()
        r = self.scripted_login(bob, "bob", "/group/headers", hops=False)
        problem = None
        if r is not None and r.status_code == 403:
            try:
                if r.json().get("error") != "insufficient_scope":
                    problem = f"error {r.json().get('error')!r}, not insufficient_scope"
            except ValueError:
                problem = "no JSON body"
        self.verdict("group route, bob", r, 403, problem=problem)
        if r is not None:
            self.deny_details(r)
            self.note("(bob's login worked; he is just not in kong_group: no login loop, a 403)")

        self.title("browser login, 5: logout ends the session here and at the mock Okta")
        self.cmd(f'curl -i -X POST -b "{jar}" {base}/oauth2/logout')
        had = set(alice.session_cookies())
        r = self.browser_post(alice, "/oauth2/logout") if had else None
        end_session = w.discovery().get("end_session_endpoint", "")
        problem = None
        if r is not None and r.status_code == 302:
            loc = r.headers.get("location", "")
            cleared = {c.name for c in session_set_cookies(r) if c.clears}
            if not loc.startswith(end_session + "?"):
                problem = f"not sent to the end-session endpoint {end_session}"
            elif "id_token_hint" not in qs1(loc):
                problem = "no id_token_hint"
            elif not had <= cleared:
                problem = f"session cookie(s) {sorted(had - cleared)} not cleared"
        self.verdict("logout", r, 302, problem=problem)
        if r is not None and r.status_code == 302:
            loc = r.headers.get("location", "")
            q = qs1(loc)
            self.note(f"Location: {short(loc, 110)}")
            hint = q.get("id_token_hint", "")
            try:
                cl = jwt_claims(hint)
                who = f": alice's ID token (sub={cl.get('sub')}, aud={cl.get('aud')})"
            except ValueError:
                who = ""
            self.note(f"  to {urlsplit(loc)._replace(query='').geturl()}, the mock Okta's end-session endpoint, with\n"
                      f"  id_token_hint={short(hint, 40)}{who}\n"
                      f"  post_logout_redirect_uri={q.get('post_logout_redirect_uri')}")
            self.note("Set-Cookie: " + ", ".join(f"{n}=; Max-Age=0" for n in sorted(had))
                      + " (the session cookie cleared, with any chunks of it and the login cookie)")
        elif r is not None:
            self.deny_details(r)
        self.act(f"alice's browser opens {base}/login/headers again")
        r = self.browser_get(alice, "/login/headers")
        problem = None
        if r is not None and r.status_code == 302 and not r.headers.get("location", "").startswith(authorize + "?"):
            problem = "not sent to the mock Okta"
        self.verdict("after logout", r, 302, problem=problem)
        if r is not None and r.status_code == 302:
            self.note("no session any more: a new login starts. (A browser following the logout Location also ends "
                      "the\nmock Okta's session: its sign-out page, then back to /public/get; the next login asks "
                      "for the password.)")

        print()
        self.note(f"in a browser: {base}/login/headers (user alice or bob, any password)")
        self.note(f"log out: {base}/oauth2/logout (POST or DELETE; a GET is refused: logout_methods)")
        self.note(f"group route: {base}/group/headers (alice passes, bob gets 403)")

    # ---- helpers of the login steps --------------------------------------------------------------------------
    def scripted_login(self, b: Browser, user: str, path: str, hops: bool = True) -> requests.Response | None:
        """Log `user` in with the login driver from `path`; the response to `path` afterwards (None on failure,
        then the reason and the hops so far are printed)."""
        try:
            _, r = login(self.world, user, path, b=b)
        except (LoginFailed, requests.RequestException) as e:
            why = e.summary if isinstance(e, LoginFailed) else f"request failed: {e}"
            self.hops(b, user)
            self.verdict(f"login as {user}", getattr(e, "response", None), 200, problem=why)
            return None
        if hops:
            self.hops(b, user)
        else:
            self.note(f"{len(b.trace)} hops: Envoy 302 -> mock Okta login form -> POST login={user} -> "
                      f"/oauth2/callback 302 (session cookie) -> {path}")
        return r

    def hops(self, b: Browser, user: str) -> None:
        self.note("the browser's hops:\n" + "\n".join(self.hop_line(i, h, user)
                                                       for i, h in enumerate(b.trace, 1)))

    def hop_line(self, i: int, h: Hop, user: str) -> str:
        """One hop of Browser.trace, short: who answered, the path, the status, where it sends the browser, which
        oidc-authz cookies it sets or clears."""
        envoy = self.world.url("")
        idp = "{0.scheme}://{0.netloc}".format(urlsplit(self.world.issuer or ""))

        def where(url: str) -> tuple[str, str]:
            for name, origin in (("Envoy", envoy), ("Okta", idp)):
                if url.startswith(origin):
                    return name, url[len(origin):]
            return "", url

        who, target = where(h.url)
        line = f"{i}. {h.method:<4} {who:<5} {clip(target, 36):<36} {h.status}"
        if h.location:
            lwho, ltarget = where(h.location)
            line += f" -> {lwho + ' ' if lwho and lwho != who else ''}{clip(ltarget, 36)}"
        if h.method == "POST":
            line += f"   (login={user}, password=x)"
        elif h.status == 200 and who == "Okta":
            line += "   (the login form)"
        sets, clears = [], set()
        for sc in h.set_cookies:
            name, _, size = sc.rstrip(")").partition("(")
            if not name.startswith("oidc_authz"):
                continue  # the mock Okta's own cookies
            if size == "cleared":
                clears.add(re.sub(r"_\d+$", "", name))
            else:
                sets.append(f"{name} {size}")
        clears -= {s.split()[0] for s in sets}
        if sets or clears:
            line += "   [" + "; ".join(([f"sets {', '.join(sets)}"] if sets else [])
                                      + ([f"clears {', '.join(sorted(clears))}"] if clears else [])) + "]"
        return line

    def browser_get(self, b: Browser, path: str) -> requests.Response | None:
        try:
            return b.go(self.world.url(path))
        except requests.RequestException as e:
            self.note(f"request failed: {e}")
            return None

    def browser_post(self, b: Browser, path: str) -> requests.Response | None:
        try:
            return b.post(self.world.url(path))
        except requests.RequestException as e:
            self.note(f"request failed: {e}")
            return None

    @staticmethod
    def echo_headers(r: requests.Response) -> dict[str, str]:
        try:
            return {k.lower(): v for k, v in r.json()["headers"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {}

    @staticmethod
    def cookie_arg(b: Browser) -> str:
        """curl -b value for a browser's session cookie(s): oidc_authz_session=$SESSION (chunks: $SESSION_0...)."""
        names = sorted(b.session_cookies()) or ["oidc_authz_session"]
        return "; ".join(f"{n}=${n.upper().removeprefix('OIDC_AUTHZ_')}" for n in names)


def cookie_names(header: str) -> list[str]:
    return [p.split("=", 1)[0].strip() for p in header.split(";") if p.strip()]


def clip(v: str, n: int) -> str:
    return v if len(v) <= n else v[: n - 3] + "..."


def short(v: str, n: int = 80) -> str:
    return v if len(v) <= n else v[: n - 20] + "..." + v[-12:]


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------
def pick_ports(random_ports: bool) -> tuple[dict[str, int], list[str]]:
    """The demo ports that are free (all free ports with --random-ports), and a note per taken one."""
    if random_ports:
        return {}, []
    keep, notes = {}, []
    for name, port in DEMO_PORTS.items():
        if port_free(port):
            keep[name] = port
        else:
            notes.append(name)
    return keep, notes


def lock_run_dir(run_dir: Path):
    """Hold .lock in the run dir for our lifetime: two demos must not share logs and configs."""
    f = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "?"
        raise SystemExit(f"demo: another demo (pid {other}) is using {run_dir}; stop it (Ctrl-C there) "
                         f"or pass --run-dir DIR")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def table(world: World, run_dir: Path) -> None:
    p = world.ports
    rows = [
        ("Envoy", f"http://127.0.0.1:{p['envoy']}  (admin :{p['envoy_admin']})", world.logs["envoy"]),
        ("oidc-authz", f"grpc 127.0.0.1:{p['grpc']}  (admin http://127.0.0.1:{p['authz_admin']}/metrics)",
         world.logs["authz"]),
    ]
    if isinstance(world, ReplicaWorld):
        rows += [
            ("oidc-authz B", f"grpc 127.0.0.1:{world.grpc_b_port}  "
                             f"(admin http://127.0.0.1:{world.authz_b_admin_port}/metrics)", world.logs["authz_b"]),
            ("Redis", f"redis://127.0.0.1:{world.redis_port}", world.logs["redis"]),
        ]
    rows += [
        ("httpbin", f"http://127.0.0.1:{p['httpbin']}", world.logs["httpbin"]),
        ("mock Okta IdP", f"{world.issuer}", world.logs["idp"]),
    ]
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    print(f"\n  {'component':<{w1}}  {'address':<{w2}}  log")
    print(f"  {'-' * w1}  {'-' * w2}  {'-' * 3}")
    for name, addr, log in rows:
        print(f"  {name:<{w1}}  {addr:<{w2}}  {rel(log)}")
    print(f"  configs: {rel(run_dir / 'envoy.yaml')} (from envoy/envoy.template.yaml), "
          f"{rel(run_dir / 'oidc-authz.toml')} (from tests/e2e/oidc-authz.template.toml)")


def wait_until_stopped(world: World) -> int:
    """Until SIGINT/SIGTERM (exit 0) or a component dies (exit 1)."""
    while True:
        time.sleep(0.5)
        for name, c in world.components.items():
            if c.starts and not c.running:
                code = c.proc.returncode if c.proc is not None else "?"
                print(f"\ndemo: {name} exited ({code}) on its own; last lines of {rel(c.log)}:\n{tail(c.log, 20)}",
                      file=sys.stderr)
                return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-wait", action="store_true",
                    help="walk the steps, stop everything, exit 1 if any status differs from the expected one")
    ap.add_argument("--random-ports", action="store_true",
                    help="free ports instead of the demo ports (8080, 9901, 9191, 9192, 8000, 9000)")
    ap.add_argument("--run-dir", type=Path, default=ROOT / ".demo", help="logs and rendered configs (default .demo/)")
    ap.add_argument("--replicas", type=int, choices=(1, 2), default=1,
                    help="2: two oidc-authz replicas sharing one Redis (Debian redis-server) behind Envoy")
    args = ap.parse_args(argv)

    # SIGINT and SIGTERM both end up in `finally` below, where every started process is stopped
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    run_dir = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    for f in RUN_FILES:
        (run_dir / f).unlink(missing_ok=True)

    binary = authz_binary(ROOT / "target" / "release" / "oidc-authz")
    ports, taken = pick_ports(args.random_ports)
    world_class = ReplicaWorld if args.replicas == 2 else World
    world = world_class(run_dir, ports=ports, authz_bin=binary, label="demo",
                  # logs go to a file a human reads: one line per event, no colours
                  authz_env={"OIDC_AUTHZ_SERVER__LOG_FORMAT": "pretty", "NO_COLOR": "1"})

    print("oidc-authz demo: client -> Envoy -> oidc-authz (ext_authz gRPC) -> httpbin, with a mock Okta IdP")
    print(f"  binary:  {rel(binary)}")
    print(f"  run dir: {rel(run_dir)} (logs, rendered configs)")
    for n in taken:
        print(f"  port {DEMO_PORTS[n]} ({PORT_ROLE[n]}) is taken: using free port {world.ports[n]} instead")
    if args.random_ports:
        print("  --random-ports: free ports instead of the demo ports")

    rc = 0
    try:
        print()
        for name, what in (REPLICA_START_ORDER if args.replicas == 2 else START_ORDER):
            port = {"authz": world.ports["grpc"], "authz_b": getattr(world, "grpc_b_port", None),
                    "redis": getattr(world, "redis_port", None)}.get(name) or world.ports[name]
            print(f"  starting {what} on 127.0.0.1:{port} ...", end=" ", flush=True)
            t0 = time.monotonic()
            try:
                world.start(name)
            except (StartError, Unavailable) as e:
                print("FAILED")
                hint = ""
                if isinstance(e, Unavailable) and name == "authz":
                    hint = "\n  (bash scripts/demo.sh builds it: cargo build --release --bin oidc-authz)"
                print(f"demo: {e}{hint}", file=sys.stderr)
                return 1
            print(f"ready in {time.monotonic() - t0:.1f}s")
        table(world, run_dir)

        walk = Walk(world)
        walk.run()
        bad = [c for c in walk.checks if not c.ok]
        print()
        if bad:
            print(f"demo: {len(bad)} UNEXPECTED answer(s): " + ", ".join(
                f"{c.title} ({c.problem})" if c.problem else f"{c.title} ({c.got}, expected {c.expected})"
                for c in bad))
            rc = 1
        else:
            print(f"all {len(walk.checks)} answers as expected")

        if args.no_wait:
            print("--no-wait: stopping")
            return rc
        print(f"\neverything keeps running: try the curl commands above (logs in {rel(run_dir)}/)")
        print("Ctrl-C to stop")
        return wait_until_stopped(world) or rc
    except Stop as e:
        print(f"\n{e}: stopping")
        return 0
    finally:
        # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t0 = time.monotonic()
        world.close()
        lock.close()
        try:
            print(f"stopped everything in {time.monotonic() - t0:.1f}s; logs kept in {rel(run_dir)}/")
        except OSError:  # stdout gone (a closed pipe): the processes are stopped all the same
            pass


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. `demo.py | head`: everything was stopped in main's `finally`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
