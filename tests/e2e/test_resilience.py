"""Failure of the parts around oidc-authz: the IdP going away (keys cached, then rotated) and oidc-authz itself
going away (Envoy must fail closed). Every test here puts the world back the way it found it."""

from __future__ import annotations

import uuid

from conftest import World, jwt_header

CC_APP = ("cc-app", "cc-app-secret")


def test_idp_down_uses_cached_keys_then_refetches_rotated_keys(authz: World):
    used = authz.idp_token(*CC_APP)
    unseen = authz.idp_token(*CC_APP)  # never shown to oidc-authz before the IdP is gone
    old_kid = jwt_header(used).get("kid")
    assert authz.get("/api/headers", token=used).status_code == 200

    authz.stop("idp")
    try:
        r = authz.get("/api/headers", token=unseen)
        assert r.status_code == 200, f"IdP down: a token signed by a cached key must pass, got {r.status_code} {r.text}"
        assert r.json()["headers"].get("X-User") == "cc-app"
    finally:
        authz.start("idp")  # same port; the mock IdP makes NEW signing keys on every start

    fresh = authz.idp_token(*CC_APP)
    assert jwt_header(fresh).get("kid") != old_kid, "mock IdP should rotate its signing key on restart"
    r = authz.get("/api/headers", token=fresh)
    assert r.status_code == 200, f"unknown kid must trigger a JWKS refetch, got {r.status_code} {r.text}"
    assert r.json()["headers"].get("X-User") == "cc-app"


def _assert_fails_closed(world: World, token: str | None = None):
    for path in ("/api/headers", "/anything/else", "/anything/routed/x"):
        marker = uuid.uuid4().hex
        r = world.get(f"{path}?probe={marker}", token=token or "whatever")
        assert r.status_code in (503, 403), f"{path}: Envoy must fail closed, got {r.status_code} {r.text[:300]}"
        assert marker not in world.httpbin_log(), f"{path}: request reached httpbin while oidc-authz was down"


def test_envoy_fails_closed_when_authz_unreachable(world: World):
    """Needs only Envoy and httpbin: with nothing on oidc-authz's port Envoy answers 503 itself."""
    was_running = world.running("authz")
    world.stop("authz")
    try:
        _assert_fails_closed(world)
        assert world.get("/public/get").status_code == 200, "the public route does not depend on oidc-authz"
    finally:
        if was_running:
            world.start("authz")


def test_authz_restart_recovers(authz: World):
    token = authz.idp_token(*CC_APP)
    assert authz.get("/api/headers", token=token).status_code == 200
    authz.stop("authz")
    try:
        _assert_fails_closed(authz, token)
    finally:
        authz.start("authz")  # same gRPC port: Envoy reconnects by itself
    assert authz.get("/api/headers", token=token).status_code == 200
