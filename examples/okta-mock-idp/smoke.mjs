// Smoke test of the mock Okta IdP: starts server.mjs on a free loopback port, drives every flow the
// oidc-authz tests rely on with plain fetch (manual cookies, no browser), stops the server.
// Run: node examples/okta-mock-idp/smoke.mjs   (exit 0 when all checks pass)

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as net from 'node:net';
import { fileURLToPath } from 'node:url';

import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';

const SERVER = fileURLToPath(new URL('./server.mjs', import.meta.url));
const REDIRECT_URI = 'http://127.0.0.1:18080/oauth2/callback';
const POST_LOGOUT_URI = 'http://127.0.0.1:18080/logged-out';

let passed = 0;
let failed = 0;
function check(name, ok, detail) {
  if (ok) {
    passed += 1;
    console.log(`ok   ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${name}${detail !== undefined ? `: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}` : ''}`);
  }
  return ok;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------- server process

const children = [];
let stderrBuf = '';

// Starts server.mjs; resolves with { child, ready } once it printed its first stdout line.
function startServer(args, env = {}) {
  // the caller's OKTA_MOCK_* variables are not passed on: each server gets exactly the settings given here
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OKTA_MOCK_')));
  const child = spawn(process.execPath, [SERVER, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...base, ...env } });
  children.push(child);
  child.stderr.on('data', (d) => { stderrBuf += d; });
  let stdoutBuf = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not print its ready line within 20s')), 20000);
    child.stdout.on('data', (d) => {
      stdoutBuf += d;
      if (stdoutBuf.includes('\n')) {
        clearTimeout(timer);
        resolve({ child, ready: stdoutBuf });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited early with ${code}`));
    });
  });
}

async function stopServer(child, signal = 'SIGTERM') {
  if (!child || child.exitCode !== null || child.signalCode !== null) return null;
  const exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve({ code, signal: sig })));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  const result = await exited;
  clearTimeout(timer);
  return result;
}
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

// ---------------------------------------------------------------- http helpers

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
const decodePayload = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
const form = (obj) => new URLSearchParams(obj).toString();
const FORM = 'application/x-www-form-urlencoded';

async function postForm(url, body, headers = {}) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': FORM, ...headers }, body: form(body), redirect: 'manual' });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { /* not json */ }
  return { status: res.status, headers: res.headers, text, json };
}

// A minimal cookie jar for one host: name -> value (paths ignored: sending every cookie back is harmless).
class Jar {
  cookies = new Map();

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      const expired = attrs.some((a) => /^max-age=0$/i.test(a)
        || (/^expires=/i.test(a) && Date.parse(a.slice(8)) < Date.now()));
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

async function browserFetch(jar, url, init = {}) {
  const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), cookie: jar.header() } });
  jar.store(res);
  const text = await res.text();
  return { status: res.status, location: res.headers.get('location'), text, headers: res.headers };
}

const absolute = (base, loc) => new URL(loc, base).href;

// Drives authorize -> login form -> (consent) -> redirect_uri. Returns the final redirect URL.
async function login(issuer, jar, user, extra = {}) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const state = b64url(crypto.randomBytes(12));
  const nonce = b64url(crypto.randomBytes(12));
  const q = new URLSearchParams({
    client_id: 'oidc-authz',
    response_type: 'code',
    scope: 'openid profile email groups offline_access api:read api:write',
    redirect_uri: REDIRECT_URI,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...extra,
  });
  const steps = [];
  let r = await browserFetch(jar, `${issuer}/v1/authorize?${q}`);
  steps.push(`GET authorize -> ${r.status} ${r.location}`);
  let url;
  let loginStatus;
  let consentSeen = false;
  for (let i = 0; i < 10 && r.location && !r.location.startsWith(REDIRECT_URI); i += 1) {
    url = absolute(issuer, r.location);
    r = await browserFetch(jar, url);
    steps.push(`GET ${new URL(url).pathname} -> ${r.status} ${r.location ?? ''}`);
    if (r.status === 200 && /name="prompt" value="login"/.test(r.text)) {
      const action = absolute(url, /<form[^>]*action="([^"]+)"/.exec(r.text)[1]);
      r = await browserFetch(jar, action, { method: 'POST', headers: { 'content-type': FORM }, body: form({ prompt: 'login', login: user, password: 'x' }) });
      loginStatus = r.status;
      steps.push(`POST login -> ${r.status} ${r.location ?? ''}`);
      if (r.status !== 303) break;
    } else if (r.status === 200 && /name="prompt" value="consent"/.test(r.text)) {
      consentSeen = true;
      const action = absolute(url, /<form[^>]*action="([^"]+)"/.exec(r.text)[1]);
      r = await browserFetch(jar, action, { method: 'POST', headers: { 'content-type': FORM }, body: form({ prompt: 'consent' }) });
      steps.push(`POST consent -> ${r.status} ${r.location ?? ''}`);
    }
  }
  return {
    final: r.location, status: r.status, steps, state, nonce, verifier, loginStatus, consentSeen,
  };
}

// ---------------------------------------------------------------- the checks

async function main() {
  const port = await freePort();
  const { child, ready } = await startServer(['--port', String(port), '--redirect-uri', REDIRECT_URI,
    '--post-logout-redirect-uri', POST_LOGOUT_URI]);
  const issuer = `http://127.0.0.1:${port}/oauth2/default`;
  check('ready line printed exactly once on stdout', ready === `okta-mock-idp ready issuer=${issuer}\n`, ready);

  // 1. discovery
  const disco = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  const expected = {
    issuer,
    authorization_endpoint: `${issuer}/v1/authorize`,
    token_endpoint: `${issuer}/v1/token`,
    introspection_endpoint: `${issuer}/v1/introspect`,
    jwks_uri: `${issuer}/v1/keys`,
    end_session_endpoint: `${issuer}/v1/logout`,
    userinfo_endpoint: `${issuer}/v1/userinfo`,
    revocation_endpoint: `${issuer}/v1/revoke`,
  };
  for (const [k, v] of Object.entries(expected)) check(`discovery ${k}`, disco[k] === v, disco[k]);
  check('discovery advertises client_credentials + refresh_token grants',
    ['authorization_code', 'client_credentials', 'refresh_token'].every((g) => disco.grant_types_supported.includes(g)), disco.grant_types_supported);
  check('discovery advertises S256 only', JSON.stringify(disco.code_challenge_methods_supported) === '["S256"]');
  const asMeta = await (await fetch(`${issuer}/.well-known/oauth-authorization-server`)).json();
  check('oauth-authorization-server metadata has the same endpoints',
    Object.entries(expected).every(([k, v]) => asMeta[k] === v), asMeta);
  const notFound = await fetch(`http://127.0.0.1:${port}/nope`);
  check('paths outside the issuer -> 404', notFound.status === 404);

  const jwksRes = await (await fetch(`${issuer}/v1/keys`)).json();
  check('JWKS has one public RS256 key', jwksRes.keys.length === 1 && jwksRes.keys[0].alg === 'RS256' && !('d' in jwksRes.keys[0]), jwksRes);
  const JWKS = createRemoteJWKSet(new URL(`${issuer}/v1/keys`));
  const kids = new Set(jwksRes.keys.map((k) => k.kid));

  // 2. client credentials, JWT for api://default
  const cc = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials', scope: 'api:read api:write' }, { authorization: basic('cc-app', 'cc-app-secret') });
  check('cc-app client_credentials (basic) -> 200', cc.status === 200, cc.text);
  const ccHeader = decodeProtectedHeader(cc.json.access_token);
  check('cc-app token header: RS256, typ at+jwt, kid in JWKS', ccHeader.alg === 'RS256' && ccHeader.typ === 'at+jwt' && kids.has(ccHeader.kid), ccHeader);
  const { payload: ccp } = await jwtVerify(cc.json.access_token, JWKS, { issuer, audience: 'api://default', typ: 'at+jwt' });
  check('cc-app token verifies with JWKS; iss/aud/exp', ccp.iss === issuer && ccp.aud === 'api://default' && typeof ccp.exp === 'number');
  check('cc-app token scp array + cid', JSON.stringify(ccp.scp) === '["api:read","api:write"]' && ccp.cid === 'cc-app', ccp);
  check('cc-app token default TTL 3600', ccp.exp - ccp.iat === 3600 && cc.json.expires_in === 3600, ccp);
  check('cc-app token has no uid/groups', !('uid' in ccp) && !('groups' in ccp), ccp);

  const ccPost = await postForm(`${issuer}/v1/token`, {
    grant_type: 'client_credentials', scope: 'api:read', client_id: 'cc-app', client_secret: 'cc-app-secret',
  });
  check('cc-app client_secret_post also works', ccPost.status === 200 && decodePayload(ccPost.json.access_token).scp.join(' ') === 'api:read', ccPost.text);

  const ccNoScope = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials' }, { authorization: basic('cc-app', 'cc-app-secret') });
  check('client_credentials without scope gets the allowed scopes',
    ccNoScope.status === 200 && decodePayload(ccNoScope.json.access_token).scp.join(' ') === 'api:read api:write', ccNoScope.text);

  const ccOther = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials', scope: 'api:read', resource: 'api://other' }, { authorization: basic('cc-app', 'cc-app-secret') });
  const otherP = ccOther.json && decodePayload(ccOther.json.access_token);
  check('resource=api://other -> JWT with aud api://other', ccOther.status === 200 && otherP.aud === 'api://other', ccOther.text);

  // 3. opaque token, introspection, revocation
  const op = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials', scope: 'api:read api:write', resource: 'api://opaque' }, { authorization: basic('cc-app', 'cc-app-secret') });
  check('resource=api://opaque -> opaque token', op.status === 200 && op.json.access_token.split('.').length === 1, op.text);
  const gw = { authorization: basic('oidc-authz', 'oidc-authz-secret') };
  const intro = await postForm(`${issuer}/v1/introspect`, { token: op.json.access_token }, gw);
  const ij = intro.json || {};
  check('introspect opaque (oidc-authz) -> active with Okta claims',
    intro.status === 200 && ij.active === true && JSON.stringify(ij.scp) === '["api:read","api:write"]' && ij.cid === 'cc-app'
    && ij.client_id === 'cc-app' && ij.scope === 'api:read api:write' && ij.sub === 'cc-app' && ij.iss === issuer
    && ij.token_type === 'Bearer' && ij.aud === 'api://opaque' && ij.exp - ij.iat === 3600, ij);
  const introByOther = await postForm(`${issuer}/v1/introspect`, { token: op.json.access_token }, { authorization: basic('cc-readonly', 'cc-readonly-secret') });
  check('introspection of another client\'s token by a non-gateway client -> active false', introByOther.json?.active === false, introByOther.text);
  const introJwt = await postForm(`${issuer}/v1/introspect`, { token: cc.json.access_token }, gw);
  check('introspect JWT access token -> 400 unsupported_token_type (oidc-provider limit)', introJwt.status === 400 && introJwt.json?.error === 'unsupported_token_type', introJwt.text);
  const rev = await postForm(`${issuer}/v1/revoke`, { token: op.json.access_token }, gw);
  check('revoke opaque token (oidc-authz) -> 200', rev.status === 200, rev.text);
  const intro2 = await postForm(`${issuer}/v1/introspect`, { token: op.json.access_token }, gw);
  check('introspect after revoke -> active false', intro2.json?.active === false && Object.keys(intro2.json).length === 1, intro2.text);
  const introGarbage = await postForm(`${issuer}/v1/introspect`, { token: 'not-a-token' }, gw);
  check('introspect unknown token -> active false', introGarbage.json?.active === false, introGarbage.text);

  // 4. cc-readonly and cc-short
  const ro = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials', scope: 'api:read api:write' }, { authorization: basic('cc-readonly', 'cc-readonly-secret') });
  const rop = ro.json && decodePayload(ro.json.access_token);
  check('cc-readonly token scp lacks api:read', ro.status === 200 && JSON.stringify(rop.scp) === '["api:write"]' && rop.aud === 'api://default', ro.text);
  const roOpaque = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials', scope: 'api:write', resource: 'api://opaque' }, { authorization: basic('cc-readonly', 'cc-readonly-secret') });
  check('cc-readonly on api://opaque -> 400 invalid_target', roOpaque.status === 400 && roOpaque.json?.error === 'invalid_target', roOpaque.text);
  const sh = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials', scope: 'api:read api:write' }, { authorization: basic('cc-short', 'cc-short-secret') });
  const shp = sh.json && decodePayload(sh.json.access_token);
  check('cc-short token exp - iat == 3', sh.status === 200 && shp.exp - shp.iat === 3 && sh.json.expires_in === 3, sh.text);

  // 5. wrong secret
  const bad = await postForm(`${issuer}/v1/token`, { grant_type: 'client_credentials', scope: 'api:read' }, { authorization: basic('cc-app', 'wrong') });
  check('wrong client secret -> 401 invalid_client', bad.status === 401 && bad.json?.error === 'invalid_client', `${bad.status} ${bad.text}`);
  const badIntro = await postForm(`${issuer}/v1/introspect`, { token: 'x' }, { authorization: basic('oidc-authz', 'wrong') });
  check('introspection with wrong secret -> 401 invalid_client', badIntro.status === 401 && badIntro.json?.error === 'invalid_client', badIntro.text);

  // 6. authorization code + PKCE as alice
  const jar = new Jar();
  const flow = await login(issuer, jar, 'alice');
  console.log(`     ${flow.steps.join('\n     ')}`);
  check('alice login ends in 303 to redirect_uri', flow.status === 303 && flow.final?.startsWith(`${REDIRECT_URI}?`), flow.steps);
  check('no consent page for oidc-authz (auto-granted)', !flow.consentSeen);
  const cb = new URL(flow.final ?? 'http://x/');
  check('callback carries code, state and iss', !!cb.searchParams.get('code') && cb.searchParams.get('state') === flow.state && cb.searchParams.get('iss') === issuer, flow.final);
  check('cookies after login: _session (+ stale path-scoped _interaction)',
    JSON.stringify([...jar.cookies.keys()].sort()) === '["_interaction","_session"]', [...jar.cookies.keys()]);

  const tok = await postForm(`${issuer}/v1/token`, {
    grant_type: 'authorization_code', code: cb.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: flow.verifier,
  }, gw);
  check('code exchange -> 200 with id_token, access_token, refresh_token',
    tok.status === 200 && tok.json.id_token && tok.json.access_token && tok.json.refresh_token && tok.json.token_type === 'Bearer', tok.text);
  const { payload: idt } = await jwtVerify(tok.json.id_token, JWKS, { issuer, audience: 'oidc-authz' });
  check('id_token: nonce, sub, email, name, groups', idt.nonce === flow.nonce && idt.sub === 'alice' && idt.email === 'alice@example.com'
    && idt.name === 'Alice Admin' && JSON.stringify(idt.groups) === '["Everyone","kong_group","admins"]', idt);
  const { payload: at } = await jwtVerify(tok.json.access_token, JWKS, { issuer, audience: 'api://default', typ: 'at+jwt' });
  check('user access token: aud, sub, uid, cid, groups, kong_claim, scp', at.sub === 'alice' && at.uid === 'alice' && at.cid === 'oidc-authz'
    && JSON.stringify(at.groups) === '["Everyone","kong_group","admins"]' && JSON.stringify(at.kong_claim) === '["kong_group"]'
    && at.scp.includes('api:read') && at.scp.includes('api:write') && at.scp.includes('openid') && at.scp.includes('groups'), at);
  check('token response scope string', typeof tok.json.scope === 'string' && tok.json.scope.includes('api:read'), tok.json.scope);


  const ui = await fetch(`${issuer}/v1/userinfo`, { headers: { authorization: `Bearer ${tok.json.access_token}` } });
  const uij = await ui.json();
  check('userinfo with the api://default access token', ui.status === 200 && uij.sub === 'alice' && uij.email === 'alice@example.com'
    && JSON.stringify(uij.groups) === '["Everyone","kong_group","admins"]', uij);
  const uiCc = await fetch(`${issuer}/v1/userinfo`, { headers: { authorization: `Bearer ${cc.json.access_token}` } });
  check('userinfo with a client_credentials token -> 401', uiCc.status === 401);

  const rintro = await postForm(`${issuer}/v1/introspect`, { token: tok.json.refresh_token }, gw);
  check('refresh token introspects active', rintro.json?.active === true && rintro.json.sub === 'alice', rintro.text);

  const ref = await postForm(`${issuer}/v1/token`, { grant_type: 'refresh_token', refresh_token: tok.json.refresh_token }, gw);
  check('refresh_token grant -> new access token + id_token, same refresh token', ref.status === 200 && ref.json.access_token && ref.json.id_token
    && ref.json.refresh_token === tok.json.refresh_token, ref.text);
  if (ref.json?.access_token) {
    const { payload: at2 } = await jwtVerify(ref.json.access_token, JWKS, { issuer, audience: 'api://default' });
    check('refreshed access token keeps Okta claims', at2.uid === 'alice' && at2.scp.includes('api:read') && Array.isArray(at2.groups), at2);
  }

  // second login in the same browser reuses the IdP session (no login form)
  const again = await login(issuer, jar, 'alice');
  check('second authorize with _session cookie -> straight to redirect_uri (SSO)', again.final?.startsWith(REDIRECT_URI) && again.loginStatus === undefined, again.steps);

  // RP-initiated logout
  const lq = new URLSearchParams({ id_token_hint: tok.json.id_token, post_logout_redirect_uri: POST_LOGOUT_URI, state: 'bye' });
  const lo = await browserFetch(jar, `${issuer}/v1/logout?${lq}`);
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(lo.text)?.[1];
  const loAction = /<form[^>]*action="([^"]+)"/.exec(lo.text)?.[1];
  check('GET /v1/logout -> 200 HTML confirm form (xsrf, logout=yes)', lo.status === 200 && !!xsrf && /name="logout" value="yes"/.test(lo.text)
    && absolute(issuer, loAction) === `${issuer}/v1/logout/confirm`, lo.text);
  const loc = await browserFetch(jar, absolute(issuer, loAction), { method: 'POST', headers: { 'content-type': FORM }, body: form({ xsrf, logout: 'yes' }) });
  check('POST /v1/logout/confirm -> 303 to post_logout_redirect_uri?state=', loc.status === 303 && loc.location === `${POST_LOGOUT_URI}?state=bye`, `${loc.status} ${loc.location}`);
  const afterLogout = await postForm(`${issuer}/v1/token`, { grant_type: 'refresh_token', refresh_token: tok.json.refresh_token }, gw);
  check('offline_access refresh token survives IdP logout (revoke it at /v1/revoke)', afterLogout.status === 200, afterLogout.text);
  const revRt = await postForm(`${issuer}/v1/revoke`, { token: tok.json.refresh_token, token_type_hint: 'refresh_token' }, gw);
  const afterRevoke = await postForm(`${issuer}/v1/token`, { grant_type: 'refresh_token', refresh_token: tok.json.refresh_token }, gw);
  check('revoked refresh token -> 400 invalid_grant', revRt.status === 200 && afterRevoke.status === 400 && afterRevoke.json?.error === 'invalid_grant', afterRevoke.text);
  const relog = await login(issuer, jar, 'bob');
  check('after logout the login form is shown again (bob logs in)', relog.loginStatus === 303 && relog.final?.startsWith(REDIRECT_URI), relog.steps);
  if (relog.final?.startsWith(REDIRECT_URI)) {
    const c = new URL(relog.final);
    const bt = await postForm(`${issuer}/v1/token`, {
      grant_type: 'authorization_code', code: c.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: relog.verifier,
    }, gw);
    const bp = decodePayload(bt.json.access_token);
    check('bob access token: groups [Everyone], kong_claim []', bp.sub === 'bob' && JSON.stringify(bp.groups) === '["Everyone"]'
      && JSON.stringify(bp.kong_claim) === '[]', bp);
    const reuse = await postForm(`${issuer}/v1/token`, {
      grant_type: 'authorization_code', code: c.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: relog.verifier,
    }, gw);
    check('code reuse -> 400 invalid_grant', reuse.status === 400 && reuse.json?.error === 'invalid_grant', reuse.text);
    const afterReuse = await postForm(`${issuer}/v1/token`, { grant_type: 'refresh_token', refresh_token: bt.json.refresh_token }, gw);
    check('code reuse revokes the grant (its refresh token stops working)', afterReuse.status === 400 && afterReuse.json?.error === 'invalid_grant', afterReuse.text);
  }

  // unknown user, missing PKCE, wrong redirect_uri
  const unknown = await login(issuer, new Jar(), 'mallory');
  check('unknown login name -> 401 login form again', unknown.loginStatus === 401, unknown.steps);
  const noPkce = await browserFetch(new Jar(), `${issuer}/v1/authorize?${new URLSearchParams({
    client_id: 'oidc-authz', response_type: 'code', scope: 'openid', redirect_uri: REDIRECT_URI, state: 's',
  })}`);
  check('authorize without PKCE -> 303 error to redirect_uri', noPkce.status === 303 && new URL(noPkce.location).searchParams.get('error') === 'invalid_request', noPkce.location);
  const badRedirect = await browserFetch(new Jar(), `${issuer}/v1/authorize?${new URLSearchParams({
    client_id: 'oidc-authz', response_type: 'code', scope: 'openid', redirect_uri: 'http://evil.example/cb', state: 's', code_challenge: 'x'.repeat(43), code_challenge_method: 'S256',
  })}`);
  check('authorize with unregistered redirect_uri -> 400 page, no redirect', badRedirect.status === 400 && !badRedirect.location, badRedirect.status);

  // login without offline_access (what a gateway asking for "openid email groups" does)
  const plain = await login(issuer, new Jar(), 'alice', { scope: 'openid email groups' });
  const pc = plain.final && new URL(plain.final);
  const ptok = await postForm(`${issuer}/v1/token`, {
    grant_type: 'authorization_code', code: pc?.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: plain.verifier,
  }, gw);
  const pat = ptok.json?.access_token && decodePayload(ptok.json.access_token);
  check('login without offline_access: no refresh_token, access token for api://default with scp [openid,email,groups]',
    ptok.status === 200 && !ptok.json.refresh_token && pat.aud === 'api://default'
    && JSON.stringify(pat.scp) === '["openid","email","groups"]', ptok.text);
  const opq = await login(issuer, new Jar(), 'alice', { scope: 'openid api:read', resource: 'api://opaque' });
  const oc = opq.final && new URL(opq.final);
  const otok = await postForm(`${issuer}/v1/token`, {
    grant_type: 'authorization_code', code: oc?.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: opq.verifier,
  }, gw);
  const oi = await postForm(`${issuer}/v1/introspect`, { token: otok.json?.access_token }, gw);
  check('login with resource=api://opaque -> opaque user token; introspection has uid/groups/sub',
    oi.json?.active === true && oi.json.sub === 'alice' && oi.json.uid === 'alice' && oi.json.aud === 'api://opaque'
    && JSON.stringify(oi.json.groups) === '["Everyone","kong_group","admins"]' && oi.json.scp.includes('api:read'), oi.text);
  const oui = await fetch(`${issuer}/v1/userinfo`, { headers: { authorization: `Bearer ${otok.json?.access_token}` } });
  check('userinfo with the opaque user token', oui.status === 200 && (await oui.json()).sub === 'alice');

  // 7. stop
  const stopped = await stopServer(child);
  check('server exits 0 on SIGTERM', stopped && stopped.code === 0, stopped);

  // environment fallbacks, issuer host override, SIGINT
  const port2 = await freePort();
  const second = await startServer(['--host', '127.0.0.1'], {
    OKTA_MOCK_PORT: String(port2),
    OKTA_MOCK_ISSUER_HOST: `okta-mock:${port2}`,
    OKTA_MOCK_ACCESS_TOKEN_TTL: '120',
    OKTA_MOCK_REDIRECT_URIS: 'http://app.test/cb1,http://app.test/cb2',
  });
  const issuer2 = `http://okta-mock:${port2}/oauth2/default`;
  check('env: OKTA_MOCK_PORT + OKTA_MOCK_ISSUER_HOST in the ready line', second.ready === `okta-mock-idp ready issuer=${issuer2}\n`, second.ready);
  const base2 = `http://127.0.0.1:${port2}/oauth2/default`;
  // fetch cannot set Host; node:http can (as a client inside a compose network would send it)
  const d2 = await new Promise((resolve, reject) => {
    http.get(`${base2}/.well-known/openid-configuration`, { headers: { host: `okta-mock:${port2}` } }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve(JSON.parse(body)));
    }).on('error', reject);
  });
  check('env: discovery issuer and endpoints use the issuer host (Host: okta-mock:N)', d2.issuer === issuer2 && d2.token_endpoint === `${issuer2}/v1/token`, d2);
  const d3 = await (await fetch(`${base2}/.well-known/openid-configuration`)).json();
  check('env: endpoints follow the request Host, the issuer does not', d3.issuer === issuer2 && d3.token_endpoint === `${base2}/v1/token`, d3);
  const t2 = await postForm(`${base2}/v1/token`, { grant_type: 'client_credentials', scope: 'api:read' }, { authorization: basic('cc-app', 'cc-app-secret') });
  const t2p = decodePayload(t2.json.access_token);
  check('env: OKTA_MOCK_ACCESS_TOKEN_TTL=120 applies; iss is the configured issuer', t2p.exp - t2p.iat === 120 && t2p.iss === issuer2, t2p);
  const t3 = await postForm(`${base2}/v1/token`, { grant_type: 'client_credentials' }, { authorization: basic('cc-short', 'cc-short-secret') });
  const t3p = decodePayload(t3.json.access_token);
  check('env: cc-short keeps its 3 s TTL', t3p.exp - t3p.iat === 3, t3p);
  const a2 = await browserFetch(new Jar(), `${base2}/v1/authorize?${new URLSearchParams({
    client_id: 'oidc-authz', response_type: 'code', scope: 'openid', redirect_uri: 'http://app.test/cb2', state: 's',
    code_challenge: 'x'.repeat(43), code_challenge_method: 'S256',
  })}`);
  check('env: OKTA_MOCK_REDIRECT_URIS registers each URI', a2.status === 303 && a2.location.includes('/interaction/'), `${a2.status} ${a2.location}`);
  const stopped2 = await stopServer(second.child, 'SIGINT');
  check('server exits 0 on SIGINT', stopped2 && stopped2.code === 0, stopped2);
}

let code = 0;
try {
  await main();
} catch (err) {
  failed += 1;
  console.log(`FAIL unexpected error: ${err.stack || err}`);
} finally {
  for (const c of children) await stopServer(c);
  if (failed) {
    console.log('--- server stderr ---');
    console.log(stderrBuf);
    code = 1;
  }
  console.log(`${passed} passed, ${failed} failed`);
}
process.exit(code);
