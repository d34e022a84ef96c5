"""The browser login driver: a `requests.Session` plays the browser through Envoy, oidc-authz and the mock Okta IdP.

Shared by the e2e suite (tests/e2e/test_login.py) and the demo (scripts/demo.py). No pytest in here: the stdlib,
`requests` and world.py only. A step that gets an answer it did not expect raises `LoginFailed` (an
AssertionError, so a test fails on it as on an assert), whose message has the answer and every hop so far.

`login(world, user, start_path)` follows every redirect by hand:

    GET  Envoy  start_path                       302 -> {issuer}/v1/authorize?...   (Set-Cookie oidc_authz_login)
    GET  IdP    /v1/authorize?...                303 -> /oauth2/default/interaction/<uid>
    GET  IdP    /interaction/<uid>               200 login form
    POST IdP    /interaction/<uid>               303 -> {issuer}/v1/authorize/<uid>  (prompt=login&login=U&password=x)
    GET  IdP    /v1/authorize/<uid>              303 -> http://127.0.0.1:<envoy>/oauth2/callback?code&state&iss
    GET  Envoy  /oauth2/callback?...             302 -> start_path            (Set-Cookie session, login cookie cleared)
    GET  Envoy  start_path                       200 (httpbin's echo) / 403 ...

The IdP (127.0.0.1:<idp>) and Envoy (127.0.0.1:<envoy>) share a host, and cookies ignore ports, so one jar holds
both sides' cookies, exactly as in a browser. Every hop is recorded in `Browser.trace`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from world import HTTP_TIMEOUT, World

SESSION = "oidc_authz_session"
LOGIN = "oidc_authz_login"
SESSION_RE = re.compile(r"^oidc_authz_session(_\d+)?$")

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
BROWSER = {"Accept": BROWSER_ACCEPT, "User-Agent": "oidc-authz-e2e (requests) Mozilla/5.0"}
XHR_JSON = {"Accept": "application/json"}


# ---------------------------------------------------------------------------------------------------------------
# cookies
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SetCookie:
    name: str
    value: str
    attrs: dict[str, str]  # lower-cased attribute names; flags map to ""
    line: str

    def has(self, attr: str) -> bool:
        return attr.lower() in self.attrs

    @property
    def clears(self) -> bool:
        """Whether this Set-Cookie deletes the cookie (Max-Age=0 or an Expires in the past)."""
        if self.attrs.get("max-age", "").strip() in ("0", "-1"):
            return True
        exp = self.attrs.get("expires")
        if exp:
            from email.utils import parsedate_to_datetime
            try:
                return parsedate_to_datetime(exp).timestamp() < time.time()
            except (TypeError, ValueError):
                return False
        return False


def set_cookies(resp: requests.Response) -> list[SetCookie]:
    """Every Set-Cookie of a response, parsed (requests joins repeated headers with ', ': use the raw list)."""
    out = []
    for line in resp.raw.headers.getlist("Set-Cookie"):
        first, *rest = line.split(";")
        name, _, value = first.strip().partition("=")
        attrs = {}
        for a in rest:
            k, _, v = a.strip().partition("=")
            if k:
                attrs[k.lower()] = v
        out.append(SetCookie(name, value, attrs, line))
    return out


def set_cookie(resp: requests.Response, name: str) -> SetCookie | None:
    found = [c for c in set_cookies(resp) if c.name == name]
    if len(found) > 1:
        raise AssertionError(f"{name} set more than once in one response: {[c.line for c in found]}")
    return found[0] if found else None


def session_set_cookies(resp: requests.Response) -> list[SetCookie]:
    return [c for c in set_cookies(resp) if SESSION_RE.match(c.name)]


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


# ---------------------------------------------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Hop:
    method: str
    url: str
    status: int
    location: str | None
    set_cookies: list[str]

    def __str__(self) -> str:
        s = f"{self.method} {self.url} -> {self.status}"
        if self.location:
            s += f" Location: {self.location}"
        if self.set_cookies:
            s += f" Set-Cookie: {', '.join(self.set_cookies)}"
        return s


class Browser(requests.Session):
    """A cookie jar and browser headers; redirects are never followed by requests, `go` records every hop."""

    def __init__(self, headers: dict | None = None):
        super().__init__()
        self.headers.update(BROWSER if headers is None else headers)
        self.trace: list[Hop] = []
        self.saw_login_form = False
        self.authorize_url: str | None = None
        self.callback_url: str | None = None
        self.callback: requests.Response | None = None

    def request(self, method, url, **kw):
        kw["allow_redirects"] = False  # (Session.get defaults it to True before calling this)
        kw.setdefault("timeout", HTTP_TIMEOUT)
        r = super().request(method, url, **kw)
        self.trace.append(Hop(method, url, r.status_code, r.headers.get("Location"),
                              [f"{c.name}({'cleared' if c.clears else f'{len(c.value)}B'})" for c in set_cookies(r)]))
        return r

    def go(self, url: str, **kw) -> requests.Response:
        return self.get(url, **kw)

    def app_cookies(self) -> dict[str, str]:
        """Cookies this jar sends to any path on 127.0.0.1 (Envoy and the IdP alike)."""
        return {c.name: c.value for c in self.cookies if c.path == "/"}

    def session_cookies(self) -> dict[str, str]:
        return {k: v for k, v in self.app_cookies().items() if SESSION_RE.match(k)}

    def describe(self) -> str:
        return "browser trace:\n  " + "\n  ".join(str(h) for h in self.trace) + \
               f"\ncookies in the jar: {sorted((c.name, c.path) for c in self.cookies)}"


def show(r: requests.Response, n: int = 600) -> str:
    hdrs = {k: v for k, v in r.headers.items() if k.lower() != "set-cookie"}
    url = r.url if len(r.url) < 400 else r.url[:400] + "..."
    return f"{r.request.method} {url} -> {r.status_code}\n  headers: {hdrs}\n  " \
           f"Set-Cookie: {[c.line[:120] for c in set_cookies(r)]}\n  body: {r.text[:n]!r}"


class LoginFailed(AssertionError):
    """A login step got an answer it did not expect. `str()` has the answer and the browser's every hop;
    `summary` is the one-line reason, `response` the answer (None when there was none)."""

    def __init__(self, b: Browser, summary: str, r: requests.Response | None = None):
        self.browser = b
        self.summary = summary
        self.response = r
        super().__init__(f"{summary}\n{show(r) if r is not None else ''}\n{b.describe()}")


def qs1(url: str) -> dict[str, str]:
    """Query of a URL as name -> single value (fails on repeated names)."""
    q = parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=False)
    dup = [k for k, v in q.items() if len(v) != 1]
    if dup:
        raise AssertionError(f"repeated query parameters {dup} in {url}")
    return {k: v[0] for k, v in q.items()}


def www_params(h: str) -> dict[str, str]:
    """The quoted parameters of a WWW-Authenticate header (realm, error, error_description, login_uri...)."""
    return dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', h))


# ---------------------------------------------------------------------------------------------------------------
# the login driver
# ---------------------------------------------------------------------------------------------------------------
FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"', re.I)
HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*>', re.I)


def form_fields(html: str) -> tuple[str, dict[str, str]]:
    """(action, hidden fields) of the first form of a page."""
    m = FORM_ACTION.search(html)
    if not m:
        raise AssertionError(f"no form in page: {html[:500]!r}")
    fields = {}
    for tag in HIDDEN.findall(html):
        n = re.search(r'name="([^"]*)"', tag)
        v = re.search(r'value="([^"]*)"', tag)
        if n:
            fields[n.group(1)] = v.group(1) if v else ""
    return m.group(1).replace("&amp;", "&"), fields


def start_login(world: World, b: Browser, path: str) -> requests.Response:
    """First request of a login: must be oidc-authz's 302 to the IdP's authorization endpoint."""
    r = b.go(world.url(path))
    auth_ep = world.discovery()["authorization_endpoint"]
    loc = r.headers.get("Location", "")
    if r.status_code != 302 or not loc.startswith(auth_ep + "?"):
        raise LoginFailed(b, f"browser without session on {path}: expected 302 to {auth_ep}?...", r)
    b.authorize_url = loc
    return r


def idp_login(world: World, b: Browser, authorize_url: str, user: str,
              callback_path: str = "/oauth2/callback") -> str:
    """Drive the IdP from the authorization URL to the redirect back to us (`callback_path`, the policy's
    redirect_uri); returns the callback URL."""
    r = b.go(authorize_url)
    loc = r.headers.get("Location", "")
    if r.status_code == 303 and "/interaction/" in loc:
        form_url = urljoin(r.url, loc)
        r = b.go(form_url)
        if r.status_code != 200:
            raise LoginFailed(b, "IdP login page", r)
        b.saw_login_form = True
        action, hidden = form_fields(r.text)
        if hidden.get("prompt") != "login":
            raise LoginFailed(b, "not the IdP's login form", r)
        r = b.post(urljoin(form_url, action), data={"prompt": "login", "login": user, "password": "x"})
        if r.status_code != 303:
            raise LoginFailed(b, f"IdP login POST as {user}", r)
        r = b.go(urljoin(r.url, r.headers["Location"]))
        loc = r.headers.get("Location", "")
    # oidc-authz is first-party at the mock IdP: no consent page; an error here is oidc-authz's authorize request
    callback = world.url(callback_path)
    if r.status_code != 303 or not loc.startswith(callback + "?"):
        raise LoginFailed(b, f"the IdP did not send the browser back to {callback} (rejected the authorize request?)",
                          r)
    return loc


def finish_login(world: World, b: Browser, authorize_url: str, user: str,
                 callback_path: str = "/oauth2/callback") -> requests.Response:
    """From the IdP's authorization URL to the response of the original URL after the callback."""
    b.callback_url = idp_login(world, b, authorize_url, user, callback_path)
    cb = b.go(b.callback_url)
    b.callback = cb
    loc = cb.headers.get("Location", "")
    if cb.status_code != 302 or not loc:
        raise LoginFailed(b, "callback: expected a 302 back to the original URL", cb)
    if not session_set_cookies(cb):
        raise LoginFailed(b, f"callback: no Set-Cookie {SESSION}", cb)
    if not loc.startswith("/") or loc.startswith("//") or loc.startswith("/\\"):
        raise LoginFailed(b, f"callback Location must be a path on this origin, got {loc!r}", cb)
    return b.go(urljoin(world.url("/"), loc))


def login(world: World, user: str = "alice", start_path: str = "/login/headers",
          b: Browser | None = None, callback_path: str = "/oauth2/callback") -> tuple[Browser, requests.Response]:
    """Log `user` in through Envoy and the IdP starting from `start_path`; (browser, response to the original URL
    after the login). The response is not checked (bob on /group/ gets a 403). `callback_path`: the path of the
    policy's redirect_uri."""
    b = b if b is not None else Browser()
    start_login(world, b, start_path)
    return b, finish_login(world, b, b.authorize_url, user, callback_path)


def login_ok(world: World, user: str = "alice", start_path: str = "/login/headers",
             callback_path: str = "/oauth2/callback") -> tuple[Browser, requests.Response]:
    """`login`, and the original URL must then answer 200."""
    b, r = login(world, user, start_path, callback_path=callback_path)
    if r.status_code != 200:
        raise LoginFailed(b, f"after logging in as {user}, {start_path} did not answer 200", r)
    return b, r


# ---------------------------------------------------------------------------------------------------------------
# a user's own tokens, straight from the IdP
# ---------------------------------------------------------------------------------------------------------------
def idp_user_tokens(world: World, user: str = "alice",
                    scope: str = "openid email profile groups offline_access api:read") -> dict:
    """An authorization-code login at the IdP as oidc-authz's own client (PKCE S256), without Envoy: the token
    endpoint's JSON answer (`access_token` for api://default, `id_token`, `refresh_token`). What a user, or an
    upstream that received the ID token, holds and could present as a bearer token."""
    import base64
    import hashlib
    import secrets
    from urllib.parse import urlencode

    disc = world.discovery()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect_uri = world.url("/oauth2/callback")
    authorize_url = disc["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": "oidc-authz", "redirect_uri": redirect_uri, "scope": scope,
        "state": secrets.token_urlsafe(16), "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    b = Browser()
    callback = idp_login(world, b, authorize_url, user)
    code = qs1(callback)["code"]
    r = requests.post(disc["token_endpoint"], auth=("oidc-authz", "oidc-authz-secret"), timeout=HTTP_TIMEOUT, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": verifier,
    })
    if r.status_code != 200:
        raise LoginFailed(b, f"code exchange at the IdP failed: {r.status_code} {r.text[:300]}", r)
    return r.json()
