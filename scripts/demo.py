#!/usr/bin/env python3
"""The oidc-authz demo: Envoy -> oidc-authz (ext_authz gRPC) -> httpbin, with a mock Okta IdP, all on loopback.

Run it with `bash scripts/demo.sh` (installs, builds, then runs this with the .venv's python), or directly:

    .venv/bin/python scripts/demo.py                 # start, walk the tutorial steps, keep running until Ctrl-C
    .venv/bin/python scripts/demo.py --no-wait       # walk the steps and stop; exit 1 if any answer is unexpected
    .venv/bin/python scripts/demo.py --random-ports  # free ports instead of 8080/9901/9191/9192/8000/9000

The world (processes, rendered configs) is tests/e2e/world.py, the same as the e2e suite's; the oidc-authz policy
set is tests/e2e/oidc-authz.template.toml, Envoy's routes envoy/envoy.template.yaml. Every status printed comes
from a real request through Envoy (or to the mock IdP); nothing is faked. Steps for flows the service does not
implement yet are labelled "coming next" and show today's real answer.

Binary: $OIDC_AUTHZ_BIN, else target/release/oidc-authz. Logs and configs: --run-dir (default .demo/).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import requests  # noqa: E402  (the .venv has it)
from world import (  # noqa: E402
    HTTP_TIMEOUT, StartError, Unavailable, World, authz_binary, jwt_claims, port_free, tail,
)

# the README's addresses: what `make demo` listens on when the ports are free
DEMO_PORTS = {"envoy": 8080, "envoy_admin": 9901, "grpc": 9191, "authz_admin": 9192, "httpbin": 8000, "idp": 9000}
PORT_ROLE = {"envoy": "Envoy listener", "envoy_admin": "Envoy admin", "grpc": "oidc-authz gRPC",
             "authz_admin": "oidc-authz admin", "httpbin": "httpbin", "idp": "mock Okta IdP"}
START_ORDER = [("httpbin", "httpbin (the upstream)"), ("idp", "mock Okta IdP (oidc-provider)"),
               ("authz", "oidc-authz"), ("envoy", "Envoy")]
# run-dir files this script (re)writes; only these are removed at start
RUN_FILES = ("httpbin.log", "envoy.log", "idp.log", "oidc-authz.log", "envoy.yaml", "oidc-authz.toml",
             "gunicorn.conf.py")

CC_APP = ("cc-app", "cc-app-secret")
CC_READONLY = ("cc-readonly", "cc-readonly-secret")
# flows the service does not do yet: the step shows today's answer under this label
COMING_LOGIN = "coming next: browser login (issue 7)"


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
    coming: str | None = None       # not implemented yet: `now` is today's answer, `expected` the eventual one
    now: int | None = None
    problem: str | None = None      # the status is right but the answer is not (e.g. a spoofed header got through)

    @property
    def ok(self) -> bool:
        if self.problem:
            return False
        return self.got == self.expected or (self.coming is not None and self.got == self.now)


@dataclass
class Walk:
    world: World
    checks: list[Check] = field(default_factory=list)
    n: int = 0
    total: int = 0

    # ---- printing --------------------------------------------------------------------------------------------
    def title(self, text: str, coming: str | None = None) -> None:
        self.n += 1
        label = f"   [{coming}]" if coming else ""
        print(f"\n[{self.n}/{self.total}] {text}{label}")

    @staticmethod
    def cmd(line: str) -> None:
        print(f"  $ {line}")

    @staticmethod
    def note(text: str) -> None:
        for i, line in enumerate(text.splitlines()):
            print(("    " if i == 0 else "      ") + line)

    def verdict(self, what: str, r: requests.Response | None, expected: int, coming: str | None = None,
                now: int | None = None, problem: str | None = None) -> Check:
        c = Check(what, r.status_code if r is not None else None, expected, coming, now, problem)
        self.checks.append(c)
        status = f"{r.status_code} {r.reason}" if r is not None else "no answer"
        if problem:
            mark = f"UNEXPECTED: {problem}"
        elif coming is None:
            mark = "ok" if c.ok else f"UNEXPECTED: expected {expected}"
        elif c.got == expected:
            mark = "works now: drop the 'coming next' label in scripts/demo.py"
        elif c.ok:
            mark = f"today's answer; {expected} once it lands"
        else:
            mark = f"UNEXPECTED: expected {now} today ({expected} once it lands)"
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
        self.total = 11

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

        self.title("browser login (authorization code + PKCE, then a session cookie)", COMING_LOGIN)
        self.cmd(f'curl -i -H "Accept: text/html" {base}/login/headers')
        r = self.through_envoy("/login/headers", {"Accept": "text/html"})
        self.verdict("browser login", r, 302, COMING_LOGIN, now=401)
        if r is not None and r.status_code == 302:
            self.note(f"Location: {short(r.headers.get('location', ''), 120)}")
        elif r is not None:
            self.deny_details(r)
        self.note(f"in a browser: {base}/login/headers (user alice or bob, any password)"
                  + ("" if r is not None and r.status_code == 302 else "; the login flow lands with issue 7"))


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
    world = World(run_dir, ports=ports, authz_bin=binary, label="demo",
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
        for name, what in START_ORDER:
            port = world.ports["grpc" if name == "authz" else name]
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
        coming = [c for c in walk.checks if c.coming and c.got != c.expected]
        print()
        if bad:
            print(f"demo: {len(bad)} UNEXPECTED answer(s): " + ", ".join(
                f"{c.title} ({c.problem})" if c.problem else
                f"{c.title} ({c.got}, expected {c.now if c.coming else c.expected})" for c in bad))
            rc = 1
        else:
            print(f"all {len(walk.checks)} answers as expected"
                  + (f" ({len(coming)} of them today's answer of a flow coming next)" if coming else ""))

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
