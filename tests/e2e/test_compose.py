"""docker-compose.yml, the Dockerfile and envoy/envoy.compose.yaml agree with each other and with the repository.

No Docker engine runs here, so nothing is built or started: the files are parsed and cross-checked, and the real
Envoy binary of the e2e venv validates the compose bootstrap (`envoy --mode validate`).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import ROOT, VENV_BIN, in_ci

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_ENVOY = ROOT / "envoy" / "envoy.compose.yaml"
COMPOSE_AUTHZ = ROOT / "examples" / "compose" / "oidc-authz.toml"
REDIS_DOCKERFILE = ROOT / "examples" / "compose" / "redis" / "Dockerfile"

# The oidc-authz replicas (one image, one config) and the Redis they share.
REPLICAS = ["oidc-authz-a", "oidc-authz-b"]
REDIS = "redis"

# How envoy/envoy.compose.yaml is rendered (the same command is in docker-compose.yml's header).
COMPOSE_RENDER = ["--bind-address", "0.0.0.0", "--listen-port", "8080", "--admin-port", "9901",
                  "--authz", "oidc-authz-a:9191", "--authz", "oidc-authz-b:9191", "--upstream", "httpbin:8080"]

# Images a user pulls by building the Dockerfile or running the compose file: official ones only.
#  - Docker Official Images (Docker Hub's `library/` namespace): rust (build stage), debian (runtime), node (mock IdP)
#  - images published by the projects themselves: envoyproxy/envoy (the Envoy project's organisation) and
#    mccutchen/go-httpbin (published by go-httpbin's author from its repository's release workflow; chosen over
#    kennethreitz/httpbin, unmaintained since 2018 and amd64 only: see docker-compose.yml)
# Redis is not pulled: examples/compose/redis/Dockerfile builds it on debian (Debian's redis-server package), so the
# demo needs nothing but the images above (see the redis service in docker-compose.yml for why).
OFFICIAL_LIBRARY_IMAGES = {"rust", "debian", "node"}
OFFICIAL_PROJECT_IMAGES = {"envoyproxy/envoy", "mccutchen/go-httpbin"}


# ---------------------------------------------------------------------------------------------------------------
# parsing helpers
# ---------------------------------------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str) -> dict:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r} (has {sorted(services)})"
    return services[name]


def image_name_and_tag(ref: str) -> tuple[str, str | None]:
    """'docker.io/library/node:22-x' -> ('node', '22-x'); digests are kept out of the tag."""
    ref = ref.split("@", 1)[0]
    name, tag = ref, None
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.startswith("library/"):
        name = name[len("library/"):]
    return name, tag


def assert_official(ref: str, where: str) -> None:
    name, tag = image_name_and_tag(ref)
    assert name in OFFICIAL_LIBRARY_IMAGES | OFFICIAL_PROJECT_IMAGES, \
        f"{where}: image {ref!r} is not on the official allow-list of tests/e2e/test_compose.py"
    assert tag and tag != "latest", f"{where}: image {ref!r} must name a version tag (not none, not 'latest')"


def bind_mounts(svc: dict) -> list[tuple[str, str, bool]]:
    """(host path as written, container path, read_only) for each bind mount; named/anonymous volumes skipped."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"], bool(v.get("read_only"))))
            continue
        parts = v.split(":")
        if len(parts) == 1:
            continue  # anonymous volume
        src, dst, mode = parts[0], parts[1], (parts[2] if len(parts) > 2 else "rw")
        if src.startswith((".", "/", "~")):
            out.append((src, dst, "ro" in mode.split(",")))
    return out


def mount_source(svc: dict, target: str) -> Path:
    for src, dst, _ in bind_mounts(svc):
        if dst == target:
            return (ROOT / src).resolve()
    raise AssertionError(f"no bind mount onto {target}: {svc.get('volumes')}")


def published(svc: dict) -> list[tuple[str | None, int, int]]:
    """(host ip, host port, container port) of each `ports` entry."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), int(p["published"]), int(p["target"])))
            continue
        p = str(p).split("/", 1)[0]
        parts = p.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append((None, int(parts[0]), int(parts[1])))
        else:
            raise AssertionError(f"port {p!r} publishes nothing fixed")
    return out


def container_port_published(svc: dict, port: int) -> int:
    for _, host, cont in published(svc):
        if cont == port:
            return host
    raise AssertionError(f"container port {port} not published: {svc.get('ports')}")


def addr_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def authz_config() -> dict:
    return tomllib.loads(COMPOSE_AUTHZ.read_text())


def redis_cmd() -> list[str]:
    """redis-server's command line: the service's `command`, else the Redis image's CMD."""
    cmd = service(REDIS).get("command")
    if cmd:
        return shlex.split(cmd) if isinstance(cmd, str) else cmd
    [stage] = dockerfile_stages(REDIS_DOCKERFILE)
    cmd_lines = [l for l in stage["lines"] if l.upper().startswith("CMD")]
    assert cmd_lines, f"{REDIS_DOCKERFILE} has no CMD"
    return json.loads(cmd_lines[-1][3:].strip())


def redis_port() -> int:
    cmd = redis_cmd()
    return int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else 6379


def okta_mock_args() -> dict[str, list[str]]:
    """Flags given to server.mjs in the okta-mock service's command."""
    cmd = service("okta-mock")["command"]
    text = cmd if isinstance(cmd, str) else " ".join(shlex.quote(c) for c in cmd)
    words = shlex.split(text)
    # sh -c "...": the script is one word; split it again
    if "-c" in words:
        words = shlex.split(words[words.index("-c") + 1])
    assert "server.mjs" in words, f"okta-mock does not run server.mjs: {text}"
    args: dict[str, list[str]] = {}
    rest = words[words.index("server.mjs") + 1:]
    for i, w in enumerate(rest):
        if w.startswith("--"):
            assert i + 1 < len(rest) and not rest[i + 1].startswith("--"), f"flag {w} has no value"
            args.setdefault(w, []).append(rest[i + 1])
        elif w in ("&&", ";", "||"):
            break
    return args


def envoy_bootstrap() -> dict:
    return yaml.safe_load(COMPOSE_ENVOY.read_text())


def envoy_cluster_raw(name: str) -> dict:
    for c in envoy_bootstrap()["static_resources"]["clusters"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"envoy.compose.yaml has no cluster {name!r}")


def envoy_cluster_endpoints(name: str) -> tuple[str, list[tuple[str, int]]]:
    """(type, [(address, port), ...]) of a static cluster's endpoints."""
    c = envoy_cluster_raw(name)
    eps = [lb["endpoint"]["address"]["socket_address"]
           for e in c["load_assignment"]["endpoints"] for lb in e["lb_endpoints"]]
    return c["type"], [(ep["address"], int(ep["port_value"])) for ep in eps]


def envoy_cluster(name: str) -> tuple[str, str, int]:
    """(type, address, port) of a static cluster's single endpoint."""
    kind, [(address, port)] = envoy_cluster_endpoints(name)
    return kind, address, port


def dockerfile_stages(path: Path = DOCKERFILE) -> list[dict]:
    """[{'image': str, 'name': str|None, 'lines': [instruction lines]}], continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[dict] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", line, re.I)
        if m:
            stages.append({"image": m.group(1), "name": m.group(2), "lines": []})
        elif stages:
            stages[-1]["lines"].append(line)
    return stages


def dockerignore() -> list[str]:
    p = ROOT / ".dockerignore"
    return [l.strip() for l in p.read_text().splitlines() if l.strip() and not l.startswith("#")] if p.exists() else []


def need_envoy() -> Path:
    envoy = VENV_BIN / "envoy"
    if not envoy.exists():
        msg = f"{envoy} missing: run scripts/e2e-setup.sh"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return envoy


# ---------------------------------------------------------------------------------------------------------------
# the compose file itself
# ---------------------------------------------------------------------------------------------------------------
def test_the_services_share_one_network():
    c = compose()
    assert set(c["services"]) == {"envoy", "httpbin", *REPLICAS, REDIS, "okta-mock"}
    nets = set(c.get("networks", {}))
    assert len(nets) == 1, nets
    for name, svc in c["services"].items():
        assert set(svc.get("networks", [])) == nets, f"{name} is not on {nets}"


def test_every_bind_mount_exists_in_the_repository():
    for name, svc in compose()["services"].items():
        for src, dst, _ in bind_mounts(svc):
            assert src.startswith("./"), f"{name}: {src} is not relative to the repository"
            assert (ROOT / src).exists(), f"{name}: bind mount source {src} does not exist"


def test_config_mounts_are_read_only():
    for name, svc in compose()["services"].items():
        for src, dst, ro in bind_mounts(svc):
            assert ro, f"{name}: {src} -> {dst} should be mounted :ro"


def test_every_build_context_has_its_dockerfile():
    builds = 0
    for name, svc in compose()["services"].items():
        b = svc.get("build")
        if b is None:
            continue
        builds += 1
        ctx, dockerfile = (b, "Dockerfile") if isinstance(b, str) else (b.get("context", "."), b.get("dockerfile", "Dockerfile"))
        assert (ROOT / ctx / dockerfile).is_file(), f"{name}: {ctx}/{dockerfile} missing"
    assert builds == 2  # oidc-authz (replica A builds the image both replicas run) and redis


def test_pulled_images_are_official_and_versioned():
    built = {svc["image"] for svc in compose()["services"].values() if "build" in svc}
    for name, svc in compose()["services"].items():
        if "build" in svc:
            continue  # built here (its base images are checked in the Dockerfile test)
        if svc.get("image") in built:
            # another service builds it (oidc-authz-b runs replica A's image): never pulled
            assert svc.get("pull_policy") == "never", f"{name} would try to pull {svc['image']}, built here"
            continue
        assert "image" in svc, f"{name} has neither image nor build"
        assert_official(svc["image"], f"docker-compose.yml service {name}")


def test_envoy_image_is_the_minor_version_the_tests_run():
    envoy = need_envoy()
    name, tag = image_name_and_tag(service("envoy")["image"])
    assert name == "envoyproxy/envoy"
    m = re.match(r"v(\d+)\.(\d+)", tag or "")
    assert m, f"envoy image tag {tag!r} names no version"
    out = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, timeout=30).stdout
    v = re.search(r"/(\d+)\.(\d+)\.\d+/", out)
    assert v, out
    assert m.groups() == v.groups(), f"compose runs Envoy {tag}, the e2e tests validate with {v.group(0).strip('/')}"


# ---------------------------------------------------------------------------------------------------------------
# the pieces agree: Envoy -> oidc-authz -> okta-mock, Envoy -> httpbin
# ---------------------------------------------------------------------------------------------------------------
def test_envoy_runs_the_compose_bootstrap():
    svc = service("envoy")
    cmd = svc.get("command") or ["envoy", "-c", "/etc/envoy/envoy.yaml"]  # the image's default
    cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
    target = cmd[cmd.index("-c") + 1]
    assert mount_source(svc, target) == COMPOSE_ENVOY.resolve()


def test_envoy_listens_on_all_interfaces_on_its_published_ports():
    svc = service("envoy")
    boot = envoy_bootstrap()
    [listener] = boot["static_resources"]["listeners"]
    addr = listener["address"]["socket_address"]
    admin = boot["admin"]["address"]["socket_address"]
    for what, a in (("listener", addr), ("admin", admin)):
        assert a["address"] == "0.0.0.0", f"Envoy {what} on {a['address']}: unreachable from outside the container"
    container_ports = {c for _, _, c in published(svc)}
    assert int(addr["port_value"]) in container_ports, f"listener port {addr['port_value']} not published"
    assert int(admin["port_value"]) in container_ports, f"admin port {admin['port_value']} not published"


def test_envoy_authz_cluster_is_both_replicas_on_their_grpc_port():
    host, port = addr_port(authz_config()["server"]["grpc_addr"])
    assert host in ("0.0.0.0", "::"), f"grpc_addr {host}: Envoy's container cannot reach it"
    assert envoy_cluster_endpoints("oidc_authz") == ("STRICT_DNS", [(r, port) for r in REPLICAS])
    # spread over both, and a replica that is not serving (or gone) is left out: round robin, gRPC health checks
    c = envoy_cluster_raw("oidc_authz")
    assert c.get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"
    [hc] = c["health_checks"]
    assert hc["grpc_health_check"]["service_name"] == "envoy.service.auth.v3.Authorization"
    # Envoy waits for no replica to start; each is reached by its service name
    deps = service("envoy")["depends_on"]
    assert set(REPLICAS) <= set(deps), deps


def test_the_replicas_are_one_image_with_one_config():
    a, b = (service(r) for r in REPLICAS)
    # A builds the image from ./Dockerfile, B runs it (one build, not two at once) and never pulls it
    assert a["build"] == "." and "build" not in b and a["image"] == b["image"], (a, b)
    assert b.get("pull_policy") == "never", b
    for k in set(a) | set(b):
        if k not in ("ports", "build", "pull_policy"):
            assert a.get(k) == b.get(k), f"the replicas differ in {k}: {a.get(k)} / {b.get(k)}"
    # the same mounted file: the same store, store secret, session secrets and policies on both
    assert mount_source(a, "/etc/oidc-authz/config.toml") == mount_source(b, "/etc/oidc-authz/config.toml") \
        == COMPOSE_AUTHZ.resolve()


def test_the_replicas_share_the_redis_service_as_their_store():
    store = authz_config()["store"]
    assert store["backend"] == "redis"
    assert "secret" in store or "secret_file" in store, "a Redis store needs the secret that seals its values"
    u = urlsplit(store["url"])
    assert u.scheme == "redis" and u.hostname == REDIS, f"store url {store['url']} is not the {REDIS} service"
    assert u.port == redis_port(), f"store url port {u.port} is not the port redis-server listens on"
    # the login policies keep their sessions there, so a login through one replica is served by the other
    cfg = authz_config()
    logins = [n for n, p in cfg["policies"].items() if "session_secret" in p]
    assert logins
    for n in logins:
        assert cfg["policies"][n].get("session_storage") == "store", f"policy {n} keeps its sessions in the cookie"
    # the replicas start once Redis answers (they would also start without it and connect later: /readyz says so)
    for r in REPLICAS:
        dep = service(r)["depends_on"][REDIS]
        assert dep["condition"] == "service_healthy", f"{r} does not wait for Redis to be healthy"


def test_redis_is_debians_redis_server_non_root_unpublished_with_a_healthcheck():
    svc = service(REDIS)
    b = svc["build"]
    ctx = b if isinstance(b, str) else b["context"]
    assert (ROOT / ctx / "Dockerfile").resolve() == REDIS_DOCKERFILE.resolve()
    [stage] = dockerfile_stages(REDIS_DOCKERFILE)
    assert_official(stage["image"], f"{REDIS_DOCKERFILE.relative_to(ROOT)} FROM {stage['image']}")
    assert image_name_and_tag(stage["image"])[0] == "debian", stage["image"]
    installs = " ".join(l for l in stage["lines"] if l.upper().startswith("RUN ") and "apt-get install" in l)
    assert re.search(r"apt-get install .*\bredis-server\b", installs), "the Redis image is not Debian's redis-server"
    users = [l.split(None, 1)[1].strip() for l in stage["lines"] if l.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the Redis image runs as root"
    assert users[-1].split(":")[0].isdigit(), f"USER {users[-1]}: numeric, so runAsNonRoot can check it"
    cmd = redis_cmd()
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--bind") + 1] == "0.0.0.0", "redis-server must listen on the compose network"
    assert cmd[cmd.index("--save") + 1] == "", "the demo's Redis needs no persistence"
    # nothing published: the store has no password and is for the replicas only
    assert not svc.get("ports"), f"redis publishes {svc.get('ports')}"
    test = svc["healthcheck"]["test"]
    text = " ".join(test[1:]) if isinstance(test, list) else test
    assert re.search(r"\bredis-cli\b.*\bping\b", text) and "PONG" in text, text
    assert f"-p {redis_port()}" in text or redis_port() == 6379, text


def test_the_walk_through_asks_each_replica_if_it_is_ready():
    """The header's `curl -i http://localhost:PORT/readyz   # 200` lines (the compose rig runs them verbatim) name
    each replica's published admin port."""
    header = COMPOSE_FILE.read_text().split("\nname:", 1)[0]
    asked = {int(p) for p in re.findall(r"curl -i http://localhost:(\d+)/readyz\s+# 200\b", header)}
    _, admin = addr_port(authz_config()["server"]["admin_addr"])
    assert asked == {container_port_published(service(r), admin) for r in REPLICAS}, asked


def test_every_published_port_is_bound_to_loopback():
    seen = {}
    for name, svc in compose()["services"].items():
        for host_ip, host_port, _ in published(svc):
            assert host_ip == "127.0.0.1", f"{name} publishes port {host_port} on {host_ip or 'every interface'}"
            assert host_port not in seen, f"{name} and {seen.get(host_port)} both publish {host_port}"
            seen[host_port] = name


def test_envoy_upstream_cluster_is_the_httpbin_service_on_its_port():
    env = service("httpbin").get("environment", {})
    port = int(env.get("PORT", 8080))  # go-httpbin listens on $PORT, 8080 by default
    assert envoy_cluster("httpbin") == ("STRICT_DNS", "httpbin", port)


@pytest.mark.parametrize("replica", REPLICAS)
def test_oidc_authz_mounts_its_config_where_the_image_reads_it(replica):
    svc = service(replica)
    runtime = dockerfile_stages()[-1]
    cmd_lines = [l for l in runtime["lines"] if l.upper().startswith("CMD")]
    assert cmd_lines, "runtime stage has no CMD"
    cmd = json.loads(cmd_lines[-1][3:].strip())
    config_path = cmd[cmd.index("--config") + 1]
    override = svc.get("command")
    if override:
        override = shlex.split(override) if isinstance(override, str) else override
        config_path = override[override.index("--config") + 1]
    assert mount_source(svc, config_path) == COMPOSE_AUTHZ.resolve()


def test_oidc_authz_admin_port_is_the_published_one():
    host, port = addr_port(authz_config()["server"]["admin_addr"])
    assert host in ("0.0.0.0", "::")
    published_ports = [container_port_published(service(r), port) for r in REPLICAS]
    # replica A keeps the port the walk-through (and the compose rig) asks for /readyz; B is next to it
    assert published_ports == [9192, 9193], published_ports


def test_issuer_is_the_okta_mock_service_as_it_names_itself():
    mock = service("okta-mock")
    args = okta_mock_args()
    [port] = args["--port"]
    assert args.get("--host") == ["0.0.0.0"], "okta-mock must listen on all interfaces in its container"
    issuer_host = mock["environment"]["OKTA_MOCK_ISSUER_HOST"]
    assert issuer_host == f"okta-mock:{port}", f"OKTA_MOCK_ISSUER_HOST {issuer_host} is not the service okta-mock:{port}"
    issuer = authz_config()["providers"]["okta"]["issuer"]
    u = urlsplit(issuer)
    assert u.netloc == issuer_host, f"oidc-authz's issuer {issuer} is not at {issuer_host}"
    assert u.path == "/oauth2/default", issuer  # the mock's issuer path
    # published on the same port, so `127.0.0.1 okta-mock` in /etc/hosts makes the issuer URL work from the host
    assert container_port_published(mock, int(port)) == int(port)
    assert f":{port}/" in " ".join(mock["healthcheck"]["test"])


def test_okta_mock_runs_the_example_from_its_mount():
    mock = service("okta-mock")
    src = mount_source(mock, "/src")
    assert src == (ROOT / "examples" / "okta-mock-idp").resolve()
    assert (src / "server.mjs").is_file() and (src / "package-lock.json").is_file()  # npm ci needs the lock file
    # the mount is read-only, and nothing is mounted inside it: an anonymous volume at /src/node_modules (or at
    # <working_dir>/node_modules over a read-only mount) needs a mount point a fresh clone does not have
    mounts = [v for v in mock["volumes"]]
    assert all(isinstance(v, str) for v in mounts), mounts
    assert [v for v in mounts if v.split(":")[1] == "/src"][0].endswith(":ro"), mounts
    targets = [v.split(":")[1] if ":" in v else v for v in mounts]
    assert not any(t.startswith("/src/") or t.startswith(mock["working_dir"]) for t in targets), mounts
    # every file the command copies exists in the checkout, and the mock imports nothing else of ours
    command = " ".join(mock["command"])
    copied = re.findall(r"/src/([\w.-]+)", command)
    assert {"package.json", "package-lock.json", "server.mjs"} <= set(copied), command
    assert all((src / f).is_file() for f in copied), copied
    assert not re.search(r"from '\./", (src / "server.mjs").read_text()), "server.mjs imports a local file the command does not copy"


def test_login_redirects_go_through_envoys_published_port():
    envoy_host_port = container_port_published(
        service("envoy"), int(envoy_bootstrap()["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]))
    args = okta_mock_args()
    cfg = authz_config()
    redirect_uris = {p["redirect_uri"] for p in cfg["policies"].values() if "redirect_uri" in p}
    assert redirect_uris, "no browser policy in the compose config"
    assert redirect_uris <= set(args["--redirect-uri"]), \
        f"oidc-authz redirect_uri {redirect_uris} not registered at okta-mock {args['--redirect-uri']}"
    for uri in args["--redirect-uri"] + args["--post-logout-redirect-uri"]:
        u = urlsplit(uri)
        assert u.port == envoy_host_port, f"{uri} does not go to Envoy's published port {envoy_host_port}"


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------------------
def test_dockerfile_bases_are_official_and_runtime_is_non_root():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a multi-stage build"
    names = {s["name"] for s in stages if s["name"]}
    for s in stages:
        if s["image"] not in names:
            assert_official(s["image"], f"Dockerfile FROM {s['image']}")
    runtime = stages[-1]
    users = [l.split(None, 1)[1].strip() for l in runtime["lines"] if l.upper().startswith("USER ")]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0"), f"runtime USER {users[-1]} is root"
    assert user.isdigit(), f"USER {user}: numeric, so Kubernetes runAsNonRoot can check it"
    exposed = {int(p) for l in runtime["lines"] if l.upper().startswith("EXPOSE ") for p in l.split()[1:]}
    cfg = authz_config()["server"]
    assert {addr_port(cfg["grpc_addr"])[1], addr_port(cfg["admin_addr"])[1]} <= exposed


def test_dockerfile_copies_only_what_exists():
    for s in dockerfile_stages():
        for l in s["lines"]:
            if not l.upper().startswith(("COPY ", "ADD ")) or "--from=" in l:
                continue
            words = [w for w in l.split()[1:] if not w.startswith("--")]
            for src in words[:-1]:
                assert (ROOT / src).exists(), f"Dockerfile: {l}: {src} does not exist"
                assert not any(src.rstrip("/") == d.rstrip("/") for d in dockerignore()), f"{src} is dockerignored"


def test_dockerfile_copies_what_cargo_needs():
    """No Docker here to catch it: a build script or an explicitly declared target outside the copied sources would
    only break `docker build`."""
    copied = [w.rstrip("/") for s in dockerfile_stages() for l in s["lines"]
              if l.upper().startswith("COPY ") and "--from=" not in l for w in l.split()[1:-1] if not w.startswith("--")]
    def is_copied(path: str) -> bool:
        path = path.removeprefix("./")
        return any(path == c or path.startswith(c + "/") for c in copied)
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    build = manifest.get("package", {}).get("build")
    if build is None and (ROOT / "build.rs").exists():
        build = "build.rs"
    if build:
        assert is_copied(build), f"Dockerfile does not copy the build script {build}"
    for kind in ("bin", "example", "test", "bench"):
        for target in manifest.get(kind, []):
            if "path" in target:
                assert is_copied(target["path"]), f"Dockerfile does not copy [[{kind}]] {target['path']}"
    lib = manifest.get("lib", {})
    if "path" in lib:
        assert is_copied(lib["path"]), f"Dockerfile does not copy [lib] {lib['path']}"
    assert {"Cargo.toml", "Cargo.lock", "src"} <= set(copied)


def test_dockerignore_keeps_the_big_directories_out():
    ignored = {e.rstrip("/") for e in dockerignore()}
    for d in ("target", ".venv", ".git"):
        assert d in ignored, f".dockerignore does not exclude {d}/"
    assert ignored & {"node_modules", "**/node_modules"}, ".dockerignore does not exclude node_modules/"


# ---------------------------------------------------------------------------------------------------------------
# envoy/envoy.compose.yaml is the template's rendering, and Envoy accepts it
# ---------------------------------------------------------------------------------------------------------------
def test_envoy_compose_yaml_is_the_rendered_template(tmp_path):
    out = tmp_path / "envoy.compose.yaml"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_envoy.py"), "--out", str(out), *COMPOSE_RENDER],
                   check=True)
    assert out.read_text() == COMPOSE_ENVOY.read_text(), \
        "envoy/envoy.compose.yaml is stale: scripts/render_envoy.py --out envoy/envoy.compose.yaml " + " ".join(COMPOSE_RENDER)


def test_envoy_accepts_the_compose_config():
    # Validation mode builds the whole config but starts no cluster, so the STRICT_DNS names (oidc-authz, httpbin),
    # which resolve only inside the compose network, are never looked up (checked with Envoy 1.40.0).
    envoy = need_envoy()
    r = subprocess.run([str(envoy), "--mode", "validate", "-c", str(COMPOSE_ENVOY)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# examples/compose/oidc-authz.toml is the e2e template's rendering: the same policies and routes as the e2e world
def test_compose_config_is_the_rendered_e2e_template(tmp_path):
    out = tmp_path / "oidc-authz.toml"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_config.py"), "--out", str(out)], check=True)
    assert out.read_text() == COMPOSE_AUTHZ.read_text(), \
        "examples/compose/oidc-authz.toml is stale: python3 scripts/render_config.py --out examples/compose/oidc-authz.toml"
