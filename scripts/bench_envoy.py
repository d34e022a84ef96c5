#!/usr/bin/env python3
"""The benchmark through Envoy (`make bench-envoy`): what a user pays per request for each way of authenticating.

Every scenario sends HTTP/1.1 requests with wrk to Envoy 1.40 (the venv's, `--concurrency 1`), whose route is a
direct_response (Envoy answers 200 itself: no upstream server in the measurement):

  direct            no authentication at all (the baseline)
  jwt-cached        Envoy's jwt_authn, jwt_cache_config on, the same token every request
  jwt-distinct      Envoy's jwt_authn, no cache, 2000 distinct tokens in rotation
  noop              ext_authz -> the no-op Check server (`loadgen noop`, answers OK without looking): the ceiling
                    (Envoy as shipped: allowed_headers, encode_raw_headers, no peer certificate)
  noop-answer       the no-op answering every Check as oidc-authz allows the api policy (3 claim headers, the 5
                    dynamic metadata fields), still without looking: what Envoy pays to apply such an answer;
                    noop-answer-headers and noop-answer-metadata: only that part of it
  noop-all          the same with Envoy sending every request header (no allowed_headers), as shipped before
  noop-browser-*    the no-op with a browser's ~15 request headers: -allowed (as shipped), -all (every header),
                    -all-map (every header, encode_raw_headers off), -allowed-map (allowed_headers, raw off)
  jwt-offload       `oidc-authz envoy-config --offload-bearer` of the api policy: jwt_authn (remote JWKS from the
                    IdP, jwt_cache_config) + RBAC on the scopes and groups + claim_to_headers, no ext_authz hop
  bearer-same       ext_authz -> oidc-authz, bearer JWT, the same token every request
  bearer-same-quiet the same with RUST_LOG=warn: no decision log line (bearer-same / this = the line's cost)
  bearer-distinct   ext_authz -> oidc-authz, bearer JWT, 2000 distinct tokens, its token cache 1 entry (each
                    Check verifies a signature, as a never-seen token does)
  intro             ext_authz -> oidc-authz, introspection, warm cache
  cc                ext_authz -> oidc-authz, client credentials (Basic in, cached token out), warm cache
  session           ext_authz -> oidc-authz, browser session cookie

oidc-authz logs as shipped (no RUST_LOG: `info`, one line per decision, to a file). Tokens are RS256 with a 2048-bit
key, the same key and claims for Envoy and oidc-authz; `loadgen idp` serves the fake identity provider and
`loadgen kit` mints the credentials (examples/loadgen/main.rs).

Envoy and the Check server are pinned to one CPU (--server-cpu), wrk and the IdP to another (--client-cpu). Each
round runs every scenario in turn (fresh processes): first a sanity check (a good request gets 200; a bad
credential and no credential get 401 or 403), then a warm-up, then the measured run. CPU per request comes from
/proc/<pid>/stat (utime + stime) of Envoy and of the Check server before and after the measured run. The table gives
the median round's throughput and latency, and the medians of the per-round ratios to `direct` and to `noop`.

  scripts/bench_envoy.py --duration 10 --rounds 5 --out bench-envoy.md
  scripts/bench_envoy.py --validate-only        # render every bootstrap and run `envoy --mode validate` on it
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.client
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Scenario:
    name: str
    what: str
    envoy: str  # direct | jwt-cached | jwt-nocache | ext-authz
    check: str | None  # None | noop | noop-answer | authz
    path: str
    good: dict  # headers of the measured request (static scenarios)
    bad: list[dict] = field(default_factory=list)  # requests that must be refused (401/403)
    distinct: bool = False  # a different Authorization header per request (the kit's distinct.tokens)
    cache_entries: int = 100_000  # oidc-authz's verified-token cache
    quiet: bool = False  # oidc-authz with RUST_LOG=warn: no decision log line (to measure what the line costs)


# The no-op's answers of the noop-answer* scenarios (`loadgen noop --answer`): scenario suffix -> what it carries.
NOOP_ANSWERS = {
    "": "like oidc-authz's bearer allow (3 claim headers, 5 metadata fields)",
    "-headers": "with only the 3 claim headers of that allow",
    "-metadata": "with only the 5 metadata fields of that allow",
}
NOOP_ANSWER_ARGS = {"": "api", "-headers": "headers", "-metadata": "metadata"}


# What a browser sends besides its credential (Chrome 131's navigation headers, cookies of the site's own).
BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Accept-Language": "en-GB,en;q=0.9,fr;q=0.8",
    "Cache-Control": "max-age=0",
    "Cookie": "_ga=GA1.1.1234567890.1733000000; theme=dark; consent=yes",
    "Referer": "https://app.example.com/orders",
    "Sec-Ch-Ua": '"Chromium";v="131", "Not_A Brand";v="24"',
    "Sec-Ch-Ua-Mobile": "?0",
    "Sec-Ch-Ua-Platform": '"Linux"',
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Site": "same-origin",
    "Sec-Fetch-User": "?1",
    "Upgrade-Insecure-Requests": "1",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
}

# ext_authz variants (bootstrap kind ext-authz-<name>): what the filter sends the Check server.
EXT_AUTHZ_VARIANTS = {
    "allowed": "allowed_headers, raw",
    "all": "all headers, raw",
    "all-map": "all headers, map",
    "allowed-map": "allowed_headers, map",
}

# `oidc-authz envoy-config` of `loadgen config` (policies api, intro, cc, web): the headers its policies read.
ALLOWED_HEADERS = """              allowed_headers:
                patterns:
                - exact: "authorization"
                - exact: "cookie"
                - exact: "accept"
                - exact: "x-requested-with"
                - exact: "origin"
                - exact: "sec-fetch-site"
                - safe_regex: { regex: "x[-_]issuer" }
                - safe_regex: { regex: "x[-_]user" }
                - safe_regex: { regex: "x[-_]client[-_]id" }
"""


def ext_authz_options(variant: str) -> str:
    """The lines of the ext_authz filter that vary: allowed_headers or not, encode_raw_headers on or off."""
    allowed = variant in ("allowed", "allowed-map")
    raw = not variant.endswith("-map")
    return ((ALLOWED_HEADERS if allowed else "              # no allowed_headers: every request header is sent\n")
            + f"              encode_raw_headers: {'true' if raw else 'false'}\n"
            + "              include_peer_certificate: false")


def scenarios(kit: Path, distinct: int) -> list[Scenario]:
    def read(name: str) -> str:
        return (kit / name).read_text().strip()

    same, bad = read("same.token"), read("bad.token")
    api = {"Accept": "application/json"}
    bearer_bad = [{**api, "Authorization": f"Bearer {bad}"}, api]
    html = "text/html,application/xhtml+xml"
    return [
        Scenario("direct", "direct_response, no auth", "direct", None, "/api/orders?limit=10", api),
        Scenario("jwt-cached", "Envoy jwt_authn + jwt_cache_config, same token", "jwt-cached", None,
                 "/api/orders?limit=10", {**api, "Authorization": f"Bearer {same}"}, bearer_bad),
        Scenario("jwt-distinct", f"Envoy jwt_authn, no cache, {distinct} distinct tokens", "jwt-nocache", None,
                 "/api/orders?limit=10", api, bearer_bad, distinct=True),
        Scenario("noop", "ext_authz -> no-op Check server", "ext-authz", "noop", "/api/orders?limit=10",
                 {**api, "Authorization": f"Bearer {same}"}),
        *[Scenario(f"noop-answer{suffix}", f"ext_authz -> no-op Check server answering {what}", "ext-authz",
                   f"noop-answer{suffix}", "/api/orders?limit=10", {**api, "Authorization": f"Bearer {same}"})
          for suffix, what in NOOP_ANSWERS.items()],
        Scenario("noop-all", "ext_authz (all headers sent) -> no-op Check server", "ext-authz-all", "noop",
                 "/api/orders?limit=10", {**api, "Authorization": f"Bearer {same}"}),
        *[Scenario(f"noop-browser-{v}", f"ext_authz ({what}) -> no-op, browser headers", f"ext-authz-{v}", "noop",
                   "/api/orders?limit=10", {**BROWSER, "Authorization": f"Bearer {same}"})
          for v, what in EXT_AUTHZ_VARIANTS.items()],
        Scenario("jwt-offload", "envoy-config --offload-bearer: jwt_authn + RBAC, same token", "jwt-offload", None,
                 "/api/orders?limit=10", {**api, "Authorization": f"Bearer {same}"}, bearer_bad),
        Scenario("bearer-same", "ext_authz -> oidc-authz bearer, same token", "ext-authz", "authz",
                 "/api/orders?limit=10", {**api, "Authorization": f"Bearer {same}"}, bearer_bad),
        Scenario("bearer-same-quiet", "ext_authz -> oidc-authz bearer, same token, no log line (RUST_LOG=warn)",
                 "ext-authz", "authz", "/api/orders?limit=10", {**api, "Authorization": f"Bearer {same}"}, bearer_bad,
                 quiet=True),
        Scenario("bearer-distinct", f"ext_authz -> oidc-authz bearer, {distinct} distinct tokens (cache of 1)",
                 "ext-authz", "authz", "/api/orders?limit=10", api, bearer_bad, distinct=True, cache_entries=1),
        Scenario("intro", "ext_authz -> oidc-authz introspection, warm cache", "ext-authz", "authz",
                 "/intro/orders", {**api, "Authorization": f"Bearer {read('intro.token')}"},
                 [{**api, "Authorization": f"Bearer {read('bad-intro.token')}"}, api]),
        Scenario("cc", "ext_authz -> oidc-authz client credentials, warm cache", "ext-authz", "authz",
                 "/cc/orders", {**api, "Authorization": f"Basic {read('cc.basic')}"},
                 [{**api, "Authorization": f"Basic {read('bad-cc.basic')}"}, api]),
        # A bad cookie from a browser navigation is redirected to log in (302); from an API client it is a 401.
        Scenario("session", "ext_authz -> oidc-authz session cookie", "ext-authz", "authz", "/web/orders",
                 {"Accept": html, "Cookie": f"{read('session.cookie')}; _ga=GA1.1.123; theme=dark"},
                 [{**api, "Cookie": read("bad-session.cookie")}, api]),
    ]


# ---- processes --------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: str, argv: list) -> list[str]:
    return ["taskset", "-c", cpu, *map(str, argv)]


class Proc:
    """A child process (taskset execs, so its pid is the server's own), its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None):
        self.name, self.log = name, log
        self.out = open(log, "ab")
        self.p = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env)

    def cpu_us(self) -> float:
        """utime + stime of the process (all its threads) in microseconds."""
        stat = Path(f"/proc/{self.p.pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) * 1e6 / CLK_TCK

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()


def http_get(port: int, path: str, headers: dict | None = None, timeout: float = 5) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_http(proc: Proc, port: int, path: str, budget: float = 60) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(f"{proc.name} exited ({proc.p.returncode}); its log: {proc.log}\n"
                             + proc.log.read_text(errors="replace")[-3000:])
        try:
            if http_get(port, path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{proc.name} not ready on 127.0.0.1:{port}{path} within {budget:.0f} s; log: {proc.log}")


def wait_port(proc: Proc, port: int, budget: float = 60) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(f"{proc.name} exited ({proc.p.returncode}); its log: {proc.log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{proc.name} not listening on 127.0.0.1:{port} within {budget:.0f} s")


# ---- Envoy bootstraps -------------------------------------------------------------------------------------------

def render(template: str, values: dict[str, str]) -> str:
    text = (BENCH / template).read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", v)
    if "{{" in text:
        raise SystemExit(f"bench/{template}: a placeholder is left: {text[text.index('{{'):][:40]}")
    return text


def bootstrap(kind: str, listen: int, admin: int, *, issuer: str = "", jwks: Path | None = None,
              authz_port: int = 0) -> str:
    ports = {"LISTEN_PORT": str(listen), "ADMIN_PORT": str(admin)}
    if kind == "direct":
        return render("envoy-direct.yaml", ports)
    if kind in ("jwt-cached", "jwt-nocache"):
        cache = ("jwt_cache_config: { jwt_cache_size: 100 }" if kind == "jwt-cached"
                 else "# no jwt_cache_config: every request verifies its token's signature")
        return render("envoy-jwt-authn.yaml", {**ports, "ISSUER": issuer, "JWKS_FILE": str(jwks),
                                               "JWT_CACHE_CONFIG": cache})
    if kind == "ext-authz" or kind.startswith("ext-authz-"):
        variant = "allowed" if kind == "ext-authz" else kind[len("ext-authz-"):]
        return render("envoy-ext-authz.yaml", {**ports, "AUTHZ_PORT": str(authz_port),
                                               "EXT_AUTHZ_OPTIONS": ext_authz_options(variant)})
    if kind == "jwt-offload":
        return offload_bootstrap(listen, admin, issuer)
    raise ValueError(kind)


BOOTSTRAP_KINDS = ["direct", "jwt-cached", "jwt-nocache", "ext-authz",
                   *[f"ext-authz-{v}" for v in EXT_AUTHZ_VARIANTS], "jwt-offload"]

OIDC_AUTHZ_BIN = Path()
LOADGEN_BIN = Path()


# The api policy of `loadgen config` (examples/loadgen/main.rs), with the jwks_uri jwt_authn needs (it does no
# discovery): the fake IdP's.
OFFLOAD_CONFIG = """
[server]
grpc_addr = "127.0.0.1:1"
admin_addr = "127.0.0.1:2"

[providers.okta]
issuer = "{{ISSUER}}"
jwks_uri = "{{ISSUER}}/v1/keys"
audiences = ["api://default"]

[policies.api]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
groups_claim = ["groups"]
groups_required = ["admins"]
upstream_headers_claims = ["iss", "sub", "cid"]
upstream_headers_names = ["x-issuer", "x-user", "x-client-id"]
"""


def offload_bootstrap(listen: int, admin: int, issuer: str) -> str:
    """A bootstrap (JSON, which Envoy reads as YAML) around `oidc-authz envoy-config --offload-bearer` of the
    benchmark's config: its filters, the api policy's per-route config on /api/ (a direct_response), its JWKS
    cluster (the fake IdP's /v1/keys)."""
    with tempfile.TemporaryDirectory(prefix="bench-offload-") as d:
        cfg = Path(d) / "authz.toml"
        cfg.write_text(OFFLOAD_CONFIG.replace("{{ISSUER}}", issuer))
        gen = json.loads(subprocess.run([str(OIDC_AUTHZ_BIN), "envoy-config", "--config", str(cfg),
                                         "--offload-bearer", "--cluster", "check_server", "--format", "json"],
                                        check=True, capture_output=True, text=True).stdout)
    if "envoy.filters.http.jwt_authn" not in gen["per_route"]["api"]:
        raise SystemExit(f"envoy-config did not offload the api policy: {json.dumps(gen)[:2000]}")
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": "ingress_http", "codec_type": "AUTO", "use_remote_address": True,
        "normalize_path": True, "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "route_config": {"name": "bench", "virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": [
            {"match": {"prefix": "/api/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
             "typed_per_filter_config": gen["per_route"]["api"]}]}]},
        "http_filters": [*gen["http_filters"], {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    check_server = {"name": "check_server", "type": "STATIC", "connect_timeout": "0.25s",
                    "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}}},
                    "load_assignment": {"cluster_name": "check_server", "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                     "port_value": 1}}}}]}]}}
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "http", "address": {"socket_address": {"address": "127.0.0.1",
                                                                          "port_value": listen}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [*gen.get("clusters", []), check_server],
        },
    }
    return json.dumps(boot, indent=1) + "\n"


def test_jwks() -> str:
    """The JWKS of the test key tests/support/keys/rsa1.pem (the one `loadgen kit` signs with), via openssl: Envoy's
    validation parses a local JWKS and refuses one without a key."""
    out = subprocess.run(["openssl", "rsa", "-in", str(ROOT / "tests/support/keys/rsa1.pem"), "-noout", "-modulus"],
                         check=True, capture_output=True, text=True).stdout
    n = bytes.fromhex(out.strip().split("=", 1)[1])
    b64 = base64.urlsafe_b64encode(n).rstrip(b"=").decode()
    return json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "bench", "n": b64,
                                 "e": "AQAB"}]}) + "\n"


def validate(envoy: Path) -> int:
    """Renders every bootstrap and runs `envoy --mode validate` on it; the number that failed."""
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench-envoy-validate-") as d:
        jwks = Path(d) / "jwks.json"
        jwks.write_text(test_jwks())
        for kind in BOOTSTRAP_KINDS:
            f = Path(d) / f"envoy-{kind}.yaml"
            f.write_text(bootstrap(kind, 18080, 18081, issuer="http://127.0.0.1:1/oauth2/default", jwks=jwks,
                                   authz_port=19191))
            r = subprocess.run([str(envoy), "--mode", "validate", "-c", str(f), "--disable-hot-restart"],
                               capture_output=True, text=True, timeout=120)
            ok = r.returncode == 0
            failed += not ok
            print(f"envoy --mode validate {kind}: {'ok' if ok else 'FAILED'}")
            if not ok:
                print(r.stdout[-3000:] + r.stderr[-3000:])
    return failed


# ---- wrk --------------------------------------------------------------------------------------------------------

WRK_DONE = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"status\":%d,\"connect\":%d,\"read\":%d,\"write\":%d," ..
    "\"timeout\":%d,\"p50_us\":%.0f,\"p99_us\":%.0f}\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
'''


def lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string of printable ASCII is a valid Lua string literal


def wrk_script(sc: Scenario, kit: Path, path: Path) -> Path:
    lines = []
    if sc.distinct:
        # Requests pre-formatted once per token in init; request() hands them out in rotation, so each request
        # carries a different token and wrk does no formatting while measuring.
        extra = ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in sc.good.items())
        lines.append(f'''
local reqs = {{}}
local i = 0
init = function(args)
  for line in io.lines({lua_str(str(kit / "distinct.tokens"))}) do
    if #line > 0 then
      local h = {{ {extra} }}
      h["Host"] = wrk.headers["Host"]
      h["Authorization"] = "Bearer " .. line
      reqs[#reqs + 1] = wrk.format("GET", {lua_str(sc.path)}, h)
    end
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
''')
    else:
        for k, v in sc.good.items():
            lines.append(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}")
    lines.append(WRK_DONE)
    path.write_text("\n".join(lines))
    return path


def run_wrk(args, script: Path, port: int, path: str, seconds: float) -> dict:
    argv = pinned(args.client_cpu, [args.wrk, "-t1", f"-c{args.connections}", f"-d{max(1, round(seconds))}s",
                                    "--timeout", "5s", "-s", script, f"http://127.0.0.1:{port}{path}"])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise SystemExit(f"wrk gave no result (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")


# ---- one scenario -----------------------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    round: int
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    failed: int  # non-2xx/3xx answers and socket errors
    envoy_us: float  # Envoy CPU per request
    check_us: float | None  # Check server CPU per request
    ratio_direct: float | None = None
    ratio_noop: float | None = None


def sanity(sc: Scenario, port: int) -> tuple[list[int], list[str]]:
    """A good request gets 200, every bad one 401 or 403. The statuses seen (good first), and the problems."""
    problems, seen = [], []
    good = dict(sc.good)
    if sc.distinct:
        tokens = (KIT / "distinct.tokens").read_text().split()
        good["Authorization"] = f"Bearer {tokens[0]}"
    status, body = http_get(port, sc.path, good)
    seen.append(status)
    if status != 200:
        problems.append(f"{sc.name}: a good request got {status}, not 200: {body[:200]!r}")
    for bad in sc.bad:
        status, body = http_get(port, sc.path, bad)
        seen.append(status)
        if status not in (401, 403):
            label = ", ".join(f"{k}: {v[:12]}..." for k, v in bad.items() if k != "Accept") or "no credential"
            problems.append(f"{sc.name}: a bad request ({label}) got {status}, not 401/403")
    return seen, problems


KIT = Path()


def run_scenario(args, sc: Scenario, rnd: int, work: Path, issuer: str) -> Result:
    check = None
    authz_port = free_port()
    if sc.check is not None and sc.check.startswith("noop"):
        extra = ["--answer", NOOP_ANSWER_ARGS[sc.check[len("noop-answer"):]]] if sc.check != "noop" else []
        check = Proc("loadgen noop", pinned(args.server_cpu, [args.loadgen, "noop", "--addr",
                                                              f"127.0.0.1:{authz_port}", *extra]),
                     work / f"noop-{rnd}.log")
        wait_port(check, authz_port)
    elif sc.check == "authz":
        admin = free_port()
        cfg = work / f"authz-{sc.name}-{rnd}.toml"
        cfg.write_text(subprocess.run(
            [args.loadgen, "config", "--issuer", issuer, "--grpc", f"127.0.0.1:{authz_port}",
             "--admin", f"127.0.0.1:{admin}", "--cache-entries", str(sc.cache_entries)],
            check=True, capture_output=True, text=True).stdout)
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}  # logging as shipped: info
        if sc.quiet:
            env["RUST_LOG"] = "warn"
        check = Proc("oidc-authz", pinned(args.server_cpu, [args.bin, "serve", "--config", cfg]),
                     work / f"authz-{sc.name}-{rnd}.log", env=env)
        wait_http(check, admin, "/readyz")
    listen, eadmin = free_port(), free_port()
    conf = work / f"envoy-{sc.name}-{rnd}.yaml"
    conf.write_text(bootstrap(sc.envoy, listen, eadmin, issuer=issuer, jwks=KIT / "jwks.json",
                              authz_port=authz_port))
    envoy = Proc("envoy", pinned(args.server_cpu, [args.envoy, "-c", conf, "--concurrency", "1",
                                                   "--disable-hot-restart", "--log-level", "warn"]),
                 work / f"envoy-{sc.name}-{rnd}.log")
    try:
        wait_http(envoy, eadmin, "/ready")
        seen, problems = sanity(sc, listen)
        if problems:
            raise SystemExit("sanity check failed, nothing measured:\n  " + "\n  ".join(problems)
                             + f"\n  logs in {work}")
        script = wrk_script(sc, KIT, work / f"{sc.name}.lua")
        if args.warmup > 0:
            run_wrk(args, script, listen, sc.path, args.warmup)
        e0, c0 = envoy.cpu_us(), check.cpu_us() if check else 0.0
        w = run_wrk(args, script, listen, sc.path, args.duration)
        e1, c1 = envoy.cpu_us(), check.cpu_us() if check else 0.0
    finally:
        envoy.stop()
        if check:
            check.stop()
    n = max(w["requests"], 1)
    failed = w["status"] + w["connect"] + w["read"] + w["write"] + w["timeout"]
    res = Result(sc.name, rnd, w["requests"] / (w["duration_us"] / 1e6), w["p50_us"], w["p99_us"], w["requests"],
                 failed, (e1 - e0) / n, (c1 - c0) / n if check else None)
    print(f"round={rnd} scenario={sc.name} req_per_s={res.rps:.0f} p50_us={res.p50_us:.0f} p99_us={res.p99_us:.0f} "
          f"requests={res.requests} failed={failed} sanity(good,bad...)={','.join(map(str, seen))} "
          f"envoy_cpu_us_per_req={res.envoy_us:.1f}"
          + (f" check_cpu_us_per_req={res.check_us:.1f}" if res.check_us is not None else ""), flush=True)
    return res


# ---- the table --------------------------------------------------------------------------------------------------

def thousands(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


def fmt_ratio(xs: list[float]) -> str:
    if not xs:
        return ""
    m = statistics.median(xs)
    return f"{m:.2f}" if len(xs) == 1 else f"{m:.2f} ({min(xs):.2f}-{max(xs):.2f})"


def table(all_results: list[Result], names: list[str], what: dict[str, str]) -> tuple[str, bool]:
    rows = ["| scenario (through Envoy) | req/s | p50 (µs) | p99 (µs) | ratio to direct | ratio to ext_authz no-op "
            "| Envoy CPU per req (µs) | Check server CPU per req (µs) | failed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ok = True
    for name in names:
        runs = [r for r in all_results if r.name == name]
        if not runs:
            continue
        runs.sort(key=lambda r: r.rps)
        m = runs[(len(runs) - 1) // 2]  # the median round (the lower one of an even count)
        rd = [r.ratio_direct for r in runs if r.ratio_direct is not None]
        rn = [r.ratio_noop for r in runs if r.ratio_noop is not None]
        env_us = statistics.median(r.envoy_us for r in runs)
        chk = [r.check_us for r in runs if r.check_us is not None]
        failed = sum(r.failed for r in runs)
        ok &= failed == 0 and all(r.requests > 0 for r in runs)
        chk_us = f"{statistics.median(chk):.0f}" if chk else ""
        rows.append(f"| {what[name]} | {thousands(m.rps)} | {thousands(m.p50_us)} | {thousands(m.p99_us)} | "
                    f"{fmt_ratio(rd)} | {fmt_ratio(rn)} | {env_us:.0f} | {chk_us} | {failed} |")
    return "\n".join(rows), ok


def versions(args) -> str:
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    envoy = first_line([args.envoy, "--version"]).split("version:")[-1].strip()
    wrk = first_line([args.wrk, "-v"]).split("[")[0].strip()
    commit = first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    return f"envoy {envoy}; {wrk}; oidc-authz {commit}; {os.cpu_count()} CPUs; {platform.platform()}"


# ---- main -------------------------------------------------------------------------------------------------------

def main() -> int:
    global KIT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="measured seconds per scenario and round")
    ap.add_argument("--warmup", type=float, default=2, help="warm-up seconds before each measured run (0: none)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32, help="wrk's keep-alive connections")
    ap.add_argument("--distinct", type=int, default=2000, help="distinct tokens for the *-distinct scenarios")
    ap.add_argument("--only", default="", help="comma-separated scenario names (direct and noop always run)")
    ap.add_argument("--server-cpu", default="0", help="taskset CPU list for Envoy and the Check server")
    ap.add_argument("--client-cpu", default="1", help="taskset CPU list for wrk and the fake IdP")
    rel = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release"
    ap.add_argument("--bin", default=str(rel / "oidc-authz"), help="the oidc-authz binary (release)")
    ap.add_argument("--loadgen", default=str(rel / "examples" / "loadgen"), help="the loadgen binary (release)")
    ap.add_argument("--envoy", default=str(ROOT / ".venv" / "bin" / "envoy"))
    ap.add_argument("--wrk", default="wrk")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, scripts)")
    ap.add_argument("--validate-only", action="store_true",
                    help="only render every Envoy bootstrap and check it with `envoy --mode validate`")
    args = ap.parse_args()

    global OIDC_AUTHZ_BIN, LOADGEN_BIN
    OIDC_AUTHZ_BIN, LOADGEN_BIN = Path(args.bin), Path(args.loadgen)
    if args.validate_only:
        return 1 if validate(Path(args.envoy)) else 0
    for tool in (args.envoy, args.bin, args.loadgen):
        if not Path(tool).is_file():
            raise SystemExit(f"missing {tool}: run `make bench-envoy` (it builds and installs what is needed)")
    command = "scripts/bench_envoy.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="bench-envoy-"))
    KIT = work / "kit"
    idp_port = free_port()
    idp = Proc("loadgen idp", pinned(args.client_cpu, [args.loadgen, "idp", "--addr", f"127.0.0.1:{idp_port}"]),
               work / "idp.log")
    try:
        issuer = f"http://127.0.0.1:{idp_port}/oauth2/default"
        wait_http(idp, idp_port, "/oauth2/default/.well-known/openid-configuration")
        print(f"minting {args.distinct} distinct RS256 tokens and the other credentials...", flush=True)
        subprocess.run([args.loadgen, "kit", "--issuer", issuer, "--dir", KIT, "--distinct", str(args.distinct)],
                       check=True)
        scs = scenarios(KIT, args.distinct)
        names = [s.name for s in scs]
        if args.only:
            wanted = {"direct", "noop", *args.only.split(",")}
            unknown = wanted - set(names)
            if unknown:
                raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(names)})")
            scs = [s for s in scs if s.name in wanted]
        all_results: list[Result] = []
        for rnd in range(1, args.rounds + 1):
            print(f"round {rnd}/{args.rounds}", flush=True)
            results = [run_scenario(args, sc, rnd, work, issuer) for sc in scs]
            direct = next(r.rps for r in results if r.name == "direct")
            noop = next(r.rps for r in results if r.name == "noop")
            with_check = {s.name for s in scs if s.check}
            for r in results:
                r.ratio_direct = r.rps / direct
                if r.name in with_check:
                    r.ratio_noop = r.rps / noop
            all_results.extend(results)
    finally:
        idp.stop()
    body, ok = table(all_results, [s.name for s in scs], {s.name: s.what for s in scs})
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = (f"`{command}` ({when})\n\n"
              f"{versions(args)}. Envoy `--concurrency 1` and the Check server on CPU {args.server_cpu}, "
              f"`wrk -t1 -c{args.connections}` on CPU {args.client_cpu}; {args.rounds} interleaved round(s) of "
              f"{args.duration:g} s after {args.warmup:g} s of warm-up. req/s, p50 and p99 are the median round's; "
              f"ratios are the medians of per-round ratios (range over rounds); CPU per request is the median over "
              f"rounds of /proc utime+stime divided by the requests of the measured run.\n\n{body}\n")
    print()
    print(report)
    if args.out:
        Path(args.out).write_text(report)
        print(f"written to {args.out}")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    if not ok:
        print("some scenario had refused or failed requests: its figures do not measure what they claim",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
