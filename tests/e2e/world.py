"""The oidc-authz world: real Envoy -> oidc-authz (ext_authz gRPC) -> httpbin, with the mock Okta IdP.

Process management and config rendering, shared by the e2e suite (tests/e2e/conftest.py wraps it in pytest
fixtures) and the demo (scripts/demo.py). No pytest in here: the stdlib and `requests` only (the .venv has both).

Every component runs as its own process group on loopback, logs to a file in the world's directory, and is
restarted on the same port by `world.start(name)`, so rendered configs stay valid. Every process a World starts
gets `E2E_WORLD_DIR=<its directory>` in its environment, so leftovers can be found by directory
(`processes_of(dir)`), and dies with the Python process that started it (PR_SET_PDEATHSIG), even on SIGKILL.

    w = World(tmp)                                               # e2e: six free loopback ports
    w = World(run_dir, ports={"envoy": 8080, ...}, authz_bin=..., label="demo")
    w.ensure("httpbin", "idp", "authz", "envoy"); ...; w.close()
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "tests" / "e2e"
VENV_BIN = ROOT / ".venv" / "bin"
IDP_DIR = ROOT / "examples" / "okta-mock-idp"
IDP_READY = re.compile(r"okta-mock-idp ready issuer=(\S+)")

START_TIMEOUT = float(os.environ.get("E2E_START_TIMEOUT", "30"))
STOP_GRACE = 5.0
HTTP_TIMEOUT = 10.0

# what a World listens on (keys of World.ports); free ports are picked for the ones not given
PORT_NAMES = ("envoy", "envoy_admin", "httpbin", "idp", "grpc", "authz_admin")
# set in the environment of every process a World starts: the World's directory
WORLD_DIR_ENV = "E2E_WORLD_DIR"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Unavailable(Exception):
    """A component cannot be started on this checkout (missing binary/script): skip locally, fail in CI."""


class StartError(Exception):
    """A component was started but did not become ready (crashed, timed out)."""


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open until all are picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port now (SO_REUSEADDR, as Envoy, gunicorn, node and tokio do,
    so a port held only by TIME_WAIT connections counts as free)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def render(template: Path, out: Path, values: dict[str, str]) -> Path:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", v)
    left = sorted(set(re.findall(r"\{\{([A-Z_]+)\}\}", text)))
    if left:
        raise RuntimeError(f"{template}: placeholders left unfilled: {left}")
    out.write_text(text)
    return out


def jwt_claims(token: str) -> dict:
    """Payload of a JWT, NOT verified (tests use it to know what to expect)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (opaque token?)")
    pad = "=" * (-len(parts[1]) % 4)
    return json.loads(base64.urlsafe_b64decode(parts[1] + pad))


def jwt_header(token: str) -> dict:
    h = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL me when the Python process dies, even by SIGKILL (Linux only)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def authz_binary(default: Path | None = None) -> Path:
    """$OIDC_AUTHZ_BIN, else `default`, else target/debug/oidc-authz."""
    env = os.environ.get("OIDC_AUTHZ_BIN")
    if env:
        return Path(env)
    return default if default is not None else ROOT / "target" / "debug" / "oidc-authz"


def processes_of(world_dir: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live process started by the World in `world_dir` (found by E2E_WORLD_DIR in
    its environment, or the directory in its command line). Linux /proc; other users' processes are not seen."""
    want_env = f"{WORLD_DIR_ENV}={world_dir}".encode()
    want_arg = str(world_dir).encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":  # a zombie has exited (its parent has not reaped it yet)
            continue
        if want_env in env.split(b"\0") or any(a == want_arg or a.startswith(want_arg + b"/")
                                                 for a in cmd.split(b"\0")):
            found.append((int(d.name), cmd.replace(b"\0", b" ").decode(errors="replace").strip()))
    return found


# ---------------------------------------------------------------------------------------------------------------
# one managed process
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Component:
    name: str
    log: Path
    argv: Callable[[], list[str]]          # built at start time (may render a config first)
    ready: Callable[["Component"], bool]   # polled until True
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    label: str = "e2e"                     # who started it, in the log's start banner
    proc: subprocess.Popen | None = None
    starts: int = 0
    log_offset: int = 0                    # where this start's output begins in the log
    broken: str | None = None              # why it failed to start: later starts fail at once with this

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def new_output(self) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        if self.running:
            return
        if self.broken:
            raise StartError(f"{self.name} failed to start earlier in this session: {self.broken}")
        try:
            self._start()
        except StartError as e:
            self.broken = str(e)
            raise

    def _start(self) -> None:
        argv = self.argv()
        self.starts += 1
        with open(self.log, "ab") as f:
            f.write(f"\n===== {self.label}: start #{self.starts} at {time.strftime('%H:%M:%S')}: "
                    f"{' '.join(argv)}\n".encode())
            self.log_offset = f.tell()
        logf = open(self.log, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_AUTHZ_")}
        env.update(self.env)
        try:
            self.proc = subprocess.Popen(
                argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() reaches gunicorn's workers too
                preexec_fn=_die_with_parent,
            )
        finally:
            logf.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode} while starting; "
                                 f"log {self.log}:\n{tail(self.log)}")
            try:
                if self.ready(self):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise StartError(f"{self.name} not ready after {START_TIMEOUT:.0f}s; log {self.log}:\n{tail(self.log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 5 s; waits for the exit."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # leader gone: make sure nothing of its process group lingers (e.g. a gunicorn worker). The group id
        # cannot have been reused while any member is alive, and with none left this is ESRCH.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(timeout=STOP_GRACE)
        self.proc = None


# ---------------------------------------------------------------------------------------------------------------
# the world
# ---------------------------------------------------------------------------------------------------------------
class World:
    """Envoy, httpbin, the mock IdP and oidc-authz on loopback ports fixed for the World's life.

    tmp:       directory for logs and rendered configs (must exist)
    ports:     any of PORT_NAMES -> port; the others get free ports
    authz_bin: the oidc-authz binary (default: authz_binary(), i.e. $OIDC_AUTHZ_BIN or target/debug/oidc-authz)
    authz_env: extra environment for oidc-authz (e.g. OIDC_AUTHZ_SERVER__LOG_FORMAT=pretty)
    label:     written in each log's start banner
    """

    NAMES = ("httpbin", "envoy", "idp", "authz")

    def __init__(self, tmp: Path, ports: dict[str, int] | None = None, authz_bin: Path | None = None,
                 authz_env: dict[str, str] | None = None, label: str = "e2e"):
        self.tmp = tmp
        given = dict(ports or {})
        unknown = set(given) - set(PORT_NAMES)
        if unknown:
            raise ValueError(f"unknown port names {sorted(unknown)}; known: {PORT_NAMES}")
        picked = iter(free_ports(len(PORT_NAMES) - len(given)))
        self.ports: dict[str, int] = {n: given[n] if n in given else next(picked) for n in PORT_NAMES}
        if len(set(self.ports.values())) != len(PORT_NAMES):
            raise ValueError(f"ports collide: {self.ports}")
        (self.envoy_port, self.envoy_admin_port, self.httpbin_port, self.idp_port,
         self.grpc_port, self.authz_admin_port) = (self.ports[n] for n in PORT_NAMES)
        self._authz_bin = authz_bin
        # TOML appended to the rendered oidc-authz config (tests that need more providers, e.g. a second IdP, set it
        # and restart authz; they clear it and stop authz when done)
        self.authz_extra = ""
        self.issuer: str | None = None
        self._discovery: dict | None = None
        self.failed = False
        mark = {WORLD_DIR_ENV: str(tmp)}
        self.components: dict[str, Component] = {
            "httpbin": Component("httpbin", tmp / "httpbin.log", self._httpbin_argv, self._httpbin_ready,
                                 env=dict(mark), label=label),
            "envoy": Component("envoy", tmp / "envoy.log", self._envoy_argv, self._envoy_ready,
                               env=dict(mark), label=label),
            "idp": Component("idp", tmp / "idp.log", self._idp_argv, self._idp_ready, cwd=IDP_DIR,
                             env=dict(mark), label=label),
            "authz": Component("authz", tmp / "oidc-authz.log", self._authz_argv, self._authz_ready,
                               env={"RUST_LOG": "info", **mark, **(authz_env or {})}, label=label),
        }

    # ---- public helpers --------------------------------------------------------------------------------------
    @property
    def authz_bin(self) -> Path:
        return self._authz_bin if self._authz_bin is not None else authz_binary()

    @property
    def logs(self) -> dict[str, Path]:
        return {n: c.log for n, c in self.components.items()}

    def url(self, path: str) -> str:
        """URL through Envoy."""
        return f"http://127.0.0.1:{self.envoy_port}{path}"

    def get(self, path: str, token: str | None = None, headers: dict | None = None, **kw) -> requests.Response:
        """GET through Envoy, no redirects followed; `token` goes in as `Authorization: Bearer`."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        kw.setdefault("timeout", HTTP_TIMEOUT)
        kw.setdefault("allow_redirects", False)
        return requests.get(self.url(path), headers=h, **kw)

    def running(self, name: str) -> bool:
        return self.components[name].running

    def start(self, name: str) -> None:
        """Start (or restart, on the same port) one component; no-op when it runs."""
        self._check_available(name)
        if name == "authz":
            self.start("idp")  # its config needs the issuer
        self.components[name].start()

    def ensure(self, *names: str) -> "World":
        for n in names:
            self.start(n)
        return self

    def stop(self, name: str) -> None:
        self.components[name].stop()

    def close(self) -> None:
        # reverse start order: Envoy first, so nothing new reaches the others
        for n in ("envoy", "authz", "httpbin", "idp"):
            try:
                self.components[n].stop()
            except Exception as e:  # keep stopping the rest
                print(f"{self.components[n].label}: stopping {n} failed: {e}", file=sys.stderr)

    def discovery(self) -> dict:
        if self._discovery is None:
            self.start("idp")
            r = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT)
            r.raise_for_status()
            self._discovery = r.json()
        return self._discovery

    def idp_token_response(self, client_id: str, secret: str, scope: str | None = "api:read",
                           resource: str | None = None) -> dict:
        """client_credentials grant at the IdP's token endpoint (client_secret_basic); the whole JSON answer."""
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        if resource is not None:
            data["resource"] = resource
        r = requests.post(self.discovery()["token_endpoint"], data=data, auth=(client_id, secret),
                          timeout=HTTP_TIMEOUT)
        if r.status_code != 200:
            raise AssertionError(f"IdP token request for {client_id} failed: {r.status_code} {r.text}")
        return r.json()

    def idp_token(self, client_id: str, secret: str, scope: str | None = "api:read",
                  resource: str | None = None) -> str:
        """An access token minted by the IdP (client credentials)."""
        return self.idp_token_response(client_id, secret, scope, resource)["access_token"]

    def httpbin_log(self) -> str:
        return self.components["httpbin"].log.read_text(errors="replace")

    def describe(self, lines: int = 30) -> str:
        out = [f"e2e world temp dir: {self.tmp}"]
        for n, c in self.components.items():
            if c.starts:
                out.append(f"--- {n}: {c.log} (last {lines} lines)")
                out.append(tail(c.log, lines))
        return "\n".join(out)

    # ---- availability ----------------------------------------------------------------------------------------
    def _check_available(self, name: str) -> None:
        if name in ("httpbin", "envoy"):
            for tool in ("envoy", "gunicorn"):
                if not (VENV_BIN / tool).exists():
                    raise Unavailable(f"{VENV_BIN / tool} missing: run scripts/e2e-setup.sh")
        elif name == "idp":
            if not (IDP_DIR / "server.mjs").exists():
                raise Unavailable(f"mock IdP {IDP_DIR / 'server.mjs'} does not exist (yet)")
            if not (IDP_DIR / "node_modules").is_dir():
                raise Unavailable(f"{IDP_DIR}/node_modules missing: run scripts/e2e-setup.sh")
            if shutil.which("node") is None:
                raise Unavailable("node not found on PATH")
        elif name == "authz":
            b = self.authz_bin
            if not (b.is_file() and os.access(b, os.X_OK)):
                raise Unavailable(f"oidc-authz binary {b} missing: build it (cargo build) or set OIDC_AUTHZ_BIN")

    # ---- per component ---------------------------------------------------------------------------------------
    def _httpbin_argv(self) -> list[str]:
        # workers are forked by the gunicorn master, so they need their own death signal (the master's own is
        # reset on fork): without it they outlive a SIGKILLed test run
        conf = self.tmp / "gunicorn.conf.py"
        conf.write_text(
            "def post_fork(server, worker):\n"
            "    import ctypes, signal\n"
            "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the master\n"
        )
        # --header-map dangerous: let headers with '_' (the cc policy's Issuer_Header) reach httpbin, which then
        # shows them as Issuer-Header; gunicorn's default drops them silently.
        return [str(VENV_BIN / "gunicorn"), "-c", str(conf), "-b", f"127.0.0.1:{self.httpbin_port}", "-w", "2",
                "--no-control-socket", "--header-map", "dangerous", "--access-logfile", "-", "httpbin:app"]

    def _httpbin_ready(self, c: Component) -> bool:
        return requests.get(f"http://127.0.0.1:{self.httpbin_port}/get", timeout=1).status_code == 200

    def _envoy_argv(self) -> list[str]:
        cfg = self.tmp / "envoy.yaml"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "render_envoy.py"), "--out", str(cfg),
             "--listen-port", str(self.envoy_port), "--admin-port", str(self.envoy_admin_port),
             "--authz", f"127.0.0.1:{self.grpc_port}", "--upstream", f"127.0.0.1:{self.httpbin_port}"],
            check=True,
        )
        return [str(VENV_BIN / "envoy"), "-c", str(cfg), "--disable-hot-restart",
                "--base-id", str(self.envoy_port), "--concurrency", "1", "-l", "warning"]

    def _envoy_ready(self, c: Component) -> bool:
        return requests.get(f"http://127.0.0.1:{self.envoy_admin_port}/ready", timeout=1).status_code == 200

    def _idp_argv(self) -> list[str]:
        cb = f"http://127.0.0.1:{self.envoy_port}"
        return ["node", str(IDP_DIR / "server.mjs"), "--port", str(self.idp_port),
                "--redirect-uri", f"{cb}/oauth2/callback",
                "--post-logout-redirect-uri", f"{cb}/public/get",
                "--backchannel-logout-uri", f"{cb}/oauth2/backchannel-logout"]

    def _idp_ready(self, c: Component) -> bool:
        m = IDP_READY.search(c.new_output())
        if not m:
            return False
        issuer = m.group(1).rstrip("/")
        if self.issuer is not None and issuer != self.issuer:
            raise StartError(f"IdP issuer changed across restarts: {self.issuer} -> {issuer}")
        self.issuer = issuer
        self._discovery = None
        return True

    def authz_config(self) -> Path:
        """Render tests/e2e/oidc-authz.template.toml (the one policy set of the e2e suite and the demo) for this
        World's ports and the IdP's issuer."""
        assert self.issuer, "IdP must be up before oidc-authz's config is rendered"
        out = render(E2E / "oidc-authz.template.toml", self.tmp / "oidc-authz.toml", {
            "GRPC_PORT": str(self.grpc_port),
            "ADMIN_PORT": str(self.authz_admin_port),
            "ISSUER": self.issuer,
            "ENVOY_PORT": str(self.envoy_port),
        })
        if self.authz_extra:
            with open(out, "a") as f:
                f.write("\n" + self.authz_extra)
        return out

    def _authz_argv(self) -> list[str]:
        return [str(self.authz_bin), "serve", "--config", str(self.authz_config())]

    def _authz_ready(self, c: Component) -> bool:
        return requests.get(f"http://127.0.0.1:{self.authz_admin_port}/readyz", timeout=1).status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# several replicas
# ---------------------------------------------------------------------------------------------------------------
# Appended to both replicas' configs (ReplicaWorld only; the single-replica world's policies stay the template's).
# Placeholders: {{ENVOY_PORT}} {{STORE_LOGIN}} (the path prefix of login_store).
STORE_POLICIES = """
# a login whose sessions live in [store]: the cookie holds only the sealed session id
[policies.login_store]
provider = "okta"
auth_methods = ["bearer", "authorization_code", "session"]
session_storage = "store"
redirect_uri = "http://127.0.0.1:{{ENVOY_PORT}}{{STORE_LOGIN}}/callback"
session_secret = "UePTBxfdBegqNEpqNNov35u26T1aGX35JU71DtqTevA="   # published (check-config warns): tests only
scopes = ["openid", "email", "profile", "groups", "offline_access", "api:read"]
upstream_headers_claims = ["sub"]
upstream_headers_names  = ["x-user"]
logout_path = "{{STORE_LOGIN}}/logout"
post_logout_redirect_uri = "http://127.0.0.1:{{ENVOY_PORT}}/public/get"

# introspection whose answers are cached long (locally and in the store): a cold burst costs at most one call
# per replica
[policies.introspect_shared]
provider = "okta"
auth_methods = ["introspection"]
cache_introspection_secs = 300
upstream_headers_claims = ["sub"]
upstream_headers_names  = ["x-user"]

[[routes]]
path_prefix = "{{STORE_LOGIN}}"
policy = "login_store"

[[routes]]
path_prefix = "/anything/introspect-shared"
policy = "introspect_shared"
"""


def redis_server_bin() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.path.exists(p)), None)


def redis_cluster_ports(n: int) -> list[int]:
    """n free ports for Redis Cluster nodes: each at most 55535, with its cluster bus port (port + 10000) free too
    (a node on a higher port refuses to start)."""
    import random
    picked: list[int] = []
    for _ in range(10_000):
        p = random.randint(20_000, 55_535)
        if p not in picked and p + 10_000 not in picked and port_free(p) and port_free(p + 10_000):
            picked.append(p)
            if len(picked) == n:
                return picked
    raise RuntimeError(f"no {n} free ports for a Redis Cluster")


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes | int | str:
    """One command to the Redis server on 127.0.0.1:port (RESP): a simple string (str), an integer, or a bulk
    string (bytes). An error reply or a closed connection raises OSError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join([f"*{len(args)}\r\n".encode()] +
                           [f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args]))
        f = s.makefile("rb")
        line = f.readline()
        if not line.endswith(b"\r\n"):
            raise OSError(f"redis on {port}: connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return b"" if n < 0 else f.read(n + 2)[:n]
        raise OSError(f"redis on {port}: {line[:200]!r}")


class ReplicaWorld(World):
    """The World with two oidc-authz replicas, "authz" (A) and "authz_b" (B), sharing one real Redis ("redis";
    `[store] backend = "redis"`), both behind one Envoy (the ext_authz cluster lists both: round robin, gRPC health
    checks, a Check retried on the other replica when one dies). `kill(name)` SIGKILLs a replica.

    redis_cluster=True: the store is a three-node Redis Cluster instead ("redis", "redis_2", "redis_3", masters
    only, created with `redis-cli --cluster create`; `url` lists the nodes, `cluster = true`).

    Both replicas also get STORE_POLICIES (this world only): `login_store`, a login whose sessions live in the
    store (/anything/store-login/, its own callback and logout path), and `introspect_shared`, introspection with
    a long cache (/anything/introspect-shared/)."""

    NAMES = World.NAMES + ("authz_b", "redis")
    STORE_LOGIN = "/anything/store-login"

    def __init__(self, tmp: Path, redis_cluster: bool = False, **kw):
        super().__init__(tmp, **kw)
        self.redis_cluster = redis_cluster
        self.grpc_b_port, self.authz_b_admin_port = free_ports(2)
        self.redis_ports = redis_cluster_ports(3) if redis_cluster else free_ports(1)
        self.redis_port = self.redis_ports[0]
        self.redis_nodes = ["redis"] + [f"redis_{i + 1}" for i in range(1, len(self.redis_ports))]
        self._cluster_created = False
        self.store_secret = base64.b64encode(os.urandom(32)).decode()
        mark = {WORLD_DIR_ENV: str(tmp)}
        label = kw.get("label", "e2e")
        self.components["authz_b"] = Component(
            "authz_b", tmp / "oidc-authz-b.log", lambda: self._replica_argv("b"), self._authz_b_ready,
            env={"RUST_LOG": "info", **mark, **(kw.get("authz_env") or {})}, label=label)
        for name, port in zip(self.redis_nodes, self.redis_ports):
            self.components[name] = Component(
                name, tmp / f"{name}.log", lambda port=port: self._redis_argv(port),
                lambda c, port=port: self._redis_ready(port), env=dict(mark), label=label)

    def start(self, name: str) -> None:
        if name in ("authz", "authz_b"):
            self.start("redis")
            self.start("idp")
        if name == "authz_b":
            self._check_available("authz")
            self.components[name].start()
            return
        if name == "redis":
            if redis_server_bin() is None:
                raise Unavailable("redis-server not found: run scripts/test-deps.sh")
            if self.redis_cluster and shutil.which("redis-cli") is None:
                raise Unavailable("redis-cli not found: run scripts/test-deps.sh")
            for n in self.redis_nodes:
                self.components[n].start()
            if self.redis_cluster:
                self._create_cluster()
            return
        super().start(name)

    def _create_cluster(self) -> None:
        """`redis-cli --cluster create` once, then wait until every node says the cluster is ok."""
        if not self._cluster_created:
            argv = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.redis_ports),
                    "--cluster-replicas", "0", "--cluster-yes"]
            with open(self.tmp / "redis-cluster-create.log", "ab") as f:
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                   timeout=START_TIMEOUT)
            if r.returncode != 0:
                raise StartError(f"redis-cli --cluster create failed ({r.returncode}): "
                                 f"{tail(self.tmp / 'redis-cluster-create.log')}")
            self._cluster_created = True
        deadline = time.monotonic() + START_TIMEOUT
        while not all(self._cluster_ok(p) for p in self.redis_ports):
            if time.monotonic() > deadline:
                raise StartError(f"the Redis Cluster on {self.redis_ports} is not ok after {START_TIMEOUT:.0f}s")
            time.sleep(0.1)

    @staticmethod
    def _cluster_ok(port: int) -> bool:
        try:
            info = redis_command(port, "CLUSTER", "INFO")
        except OSError:
            return False
        return isinstance(info, bytes) and b"cluster_state:ok" in info

    def _idp_argv(self) -> list[str]:
        # login_store's own callback (the callback is the policy's redirect_uri path)
        return super()._idp_argv() + ["--redirect-uri", self.url(f"{self.STORE_LOGIN}/callback")]

    def kill(self, name: str) -> None:
        """SIGKILL a component (no drain, no goodbye), then reap it."""
        c = self.components[name]
        if c.proc is not None and c.proc.poll() is None:
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait(timeout=STOP_GRACE)
        c.proc = None

    def close(self) -> None:
        super().close()
        for n in ("authz_b", *self.redis_nodes):
            try:
                self.components[n].stop()
            except Exception as e:  # keep stopping the rest
                print(f"{self.components[n].label}: stopping {n} failed: {e}", file=sys.stderr)

    def redis_command(self, node: str, *args: str) -> bytes | int | str:
        """One command to a Redis node of this world ("redis", or "redis_2"/"redis_3" of a cluster)."""
        return redis_command(self.redis_ports[self.redis_nodes.index(node)], *args)

    def admin_url(self, replica: str, path: str) -> str:
        port = self.authz_admin_port if replica == "authz" else self.authz_b_admin_port
        return f"http://127.0.0.1:{port}{path}"

    def metric(self, replica: str, prefix: str) -> float:
        """The sum of the samples of one replica's /metrics whose line starts with `prefix`."""
        text = requests.get(self.admin_url(replica, "/metrics"), timeout=HTTP_TIMEOUT).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def checks_answered(self, replica: str) -> int:
        """How many Checks a replica has logged."""
        log = self.components[replica].log
        return sum(1 for line in log.read_text(errors="replace").splitlines() if '"message":"check"' in line)

    def replica_config(self, which: str) -> Path:
        grpc, admin = (self.grpc_port, self.authz_admin_port) if which == "a" else \
            (self.grpc_b_port, self.authz_b_admin_port)
        out = render(E2E / "oidc-authz.template.toml", self.tmp / f"oidc-authz-{which}.toml", {
            "GRPC_PORT": str(grpc),
            "ADMIN_PORT": str(admin),
            "ISSUER": self.issuer or "",
            "ENVOY_PORT": str(self.envoy_port),
        })
        if self.redis_cluster:
            url = "[" + ", ".join(f'"redis://127.0.0.1:{p}/"' for p in self.redis_ports) + "]\ncluster = true"
        else:
            url = f'"redis://127.0.0.1:{self.redis_port}/0"'
        with open(out, "a") as f:
            # timeout_ms: a generous budget for a loaded CI machine (the default 250 ms is for production); still
            # inside the Check deadline (900 ms), so a slow store is a 503, never Envoy's own failure answer.
            f.write(f'\n[store]\nbackend = "redis"\nurl = {url}\nsecret = "{self.store_secret}"\ntimeout_ms = 700\n')
            f.write(STORE_POLICIES.replace("{{ENVOY_PORT}}", str(self.envoy_port))
                    .replace("{{STORE_LOGIN}}", self.STORE_LOGIN))
        return out

    def authz_config(self) -> Path:
        return self.replica_config("a")

    def _replica_argv(self, which: str) -> list[str]:
        return [str(self.authz_bin), "serve", "--config", str(self.replica_config(which))]

    def _authz_b_ready(self, c: Component) -> bool:
        return requests.get(self.admin_url("authz_b", "/readyz"), timeout=1).status_code == 200

    def _envoy_argv(self) -> list[str]:
        cfg = self.tmp / "envoy.yaml"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "render_envoy.py"), "--out", str(cfg),
             "--listen-port", str(self.envoy_port), "--admin-port", str(self.envoy_admin_port),
             "--authz", f"127.0.0.1:{self.grpc_port}", "--authz", f"127.0.0.1:{self.grpc_b_port}",
             "--upstream", f"127.0.0.1:{self.httpbin_port}"],
            check=True,
        )
        return [str(VENV_BIN / "envoy"), "-c", str(cfg), "--disable-hot-restart",
                "--base-id", str(self.envoy_port), "--concurrency", "1", "-l", "warning"]

    def _redis_argv(self, port: int) -> list[str]:
        d = self.tmp / ("redis" if port == self.redis_port else f"redis-{port}")
        d.mkdir(exist_ok=True)
        argv = [redis_server_bin() or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(d)]
        if self.redis_cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"]
        return argv

    @staticmethod
    def _redis_ready(port: int) -> bool:
        try:
            return redis_command(port, "PING", timeout=1) == "PONG"
        except OSError:
            return False

    def envoy_healthy(self) -> set[str]:
        """The replicas ("authz", "authz_b") Envoy's health checks count as healthy now."""
        text = requests.get(f"http://127.0.0.1:{self.envoy_admin_port}/clusters", timeout=1).text
        ports = {self.grpc_port: "authz", self.grpc_b_port: "authz_b"}
        out = set()
        for line in text.splitlines():
            m = re.match(r"oidc_authz::127\.0\.0\.1:(\d+)::health_flags::healthy$", line)
            if m and int(m.group(1)) in ports:
                out.add(ports[int(m.group(1))])
        return out

    def envoy_sees_healthy(self, n: int) -> bool:
        """Whether Envoy's health checks count `n` healthy oidc-authz replicas."""
        return len(self.envoy_healthy()) == n

    def only(self, replica: str) -> None:
        """Leave only `replica` running, and wait until Envoy's health checks say so (a generous budget)."""
        other = "authz_b" if replica == "authz" else "authz"
        self.start(replica)
        self.stop(other)
        deadline = time.monotonic() + 30
        while self.envoy_healthy() != {replica}:
            if time.monotonic() > deadline:
                raise StartError(f"Envoy does not see only {replica} healthy: {self.envoy_healthy()}")
            time.sleep(0.1)
