// Mock Okta authorization server ("default" custom authorization server) for oidc-authz tests.
//
// This is a configuration of the OpenID Certified `oidc-provider` package, not an IdP of its own:
// discovery, JWKS, authorization code + PKCE, client credentials, refresh tokens, introspection,
// revocation and RP-initiated logout are all oidc-provider's. What this file adds:
//   - Okta's paths ({issuer}=/oauth2/default, /v1/authorize, /v1/token, ...),
//   - fixed clients, users and resource servers (see README.md),
//   - Okta-style access-token claims (scp array, cid, uid, groups, kong_claim),
//   - a minimal login/consent interaction (like oidc-provider's devInteractions, but unknown users fail),
//   - a /v1/userinfo shim that, like Okta, accepts the api://default access token.
//
// Usage: node server.mjs --port N [--host 127.0.0.1] [--redirect-uri URL ...] [--post-logout-redirect-uri URL ...]
//        [--backchannel-logout-uri URL]  (the gateway client's OpenID Connect Back-Channel Logout endpoint)

// oidc-provider prints its notices with console.info (stdout); keep stdout for the single ready line.
console.info = (...args) => console.error(...args);

import * as http from 'node:http';
import * as querystring from 'node:querystring';
import { parseArgs } from 'node:util';

import { calculateJwkThumbprint, decodeProtectedHeader, exportJWK, generateKeyPair, jwtVerify } from 'jose';
import Provider, { errors, interactionPolicy } from 'oidc-provider';

const ISSUER_PATH = '/oauth2/default';

// ---------------------------------------------------------------- settings

const splitList = (value) => (value ? value.split(',').map((s) => s.trim()).filter(Boolean) : []);

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true },
    'post-logout-redirect-uri': { type: 'string', multiple: true },
    'backchannel-logout-uri': { type: 'string' },
  },
  strict: true,
});

const port = Number(args.port ?? process.env.OKTA_MOCK_PORT ?? 0);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`okta-mock-idp: invalid port ${args.port ?? process.env.OKTA_MOCK_PORT}`);
  process.exit(64);
}
const host = args.host ?? '127.0.0.1';
const redirectUris = args['redirect-uri']?.length
  ? args['redirect-uri']
  : (splitList(process.env.OKTA_MOCK_REDIRECT_URIS).length
    ? splitList(process.env.OKTA_MOCK_REDIRECT_URIS)
    : ['http://127.0.0.1:8080/oauth2/callback']);
const postLogoutRedirectUris = args['post-logout-redirect-uri']?.length
  ? args['post-logout-redirect-uri']
  : (splitList(process.env.OKTA_MOCK_POST_LOGOUT_REDIRECT_URIS).length
    ? splitList(process.env.OKTA_MOCK_POST_LOGOUT_REDIRECT_URIS)
    : ['http://127.0.0.1:8080/']);
// where the gateway client hears of ended provider sessions (OpenID Connect Back-Channel Logout), if anywhere
const backchannelLogoutUri = args['backchannel-logout-uri'] ?? process.env.OKTA_MOCK_BACKCHANNEL_LOGOUT_URI;
const accessTokenTTL = Number(process.env.OKTA_MOCK_ACCESS_TOKEN_TTL || 3600);
if (!Number.isInteger(accessTokenTTL) || accessTokenTTL <= 0) {
  console.error('okta-mock-idp: OKTA_MOCK_ACCESS_TOKEN_TTL must be a positive integer (seconds)');
  process.exit(64);
}
const SHORT_TTL = 3; // cc-short's access tokens

// ---------------------------------------------------------------- users, clients, resources

const USERS = {
  alice: {
    email: 'alice@example.com',
    name: 'Alice Admin',
    given_name: 'Alice',
    family_name: 'Admin',
    groups: ['Everyone', 'kong_group', 'admins'],
    kong_claim: ['kong_group'],
  },
  bob: {
    email: 'bob@example.com',
    name: 'Bob Builder',
    given_name: 'Bob',
    family_name: 'Builder',
    groups: ['Everyone'],
    kong_claim: [],
  },
};

// login name (or email) -> account id, undefined when unknown
function lookupLogin(login) {
  const name = String(login ?? '').trim().toLowerCase();
  if (Object.hasOwn(USERS, name)) return name;
  return Object.keys(USERS).find((id) => USERS[id].email === name);
}

function userClaims(accountId) {
  const u = USERS[accountId];
  return {
    sub: accountId,
    email: u.email,
    email_verified: true,
    name: u.name,
    given_name: u.given_name,
    family_name: u.family_name,
    preferred_username: u.email,
    groups: [...u.groups],
  };
}

const RESOURCES = {
  'api://default': {
    scope: 'api:read api:write', audience: 'api://default', accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
  },
  'api://opaque': { scope: 'api:read api:write', audience: 'api://opaque', accessTokenFormat: 'opaque' },
  'api://other': {
    scope: 'api:read', audience: 'api://other', accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
  },
};
const DEFAULT_RESOURCE = 'api://default';

// client_id -> resource -> scopes the client may get there (intersected with the resource's scopes)
const CLIENT_RESOURCE_SCOPES = {
  'cc-app': { 'api://default': 'api:read api:write', 'api://opaque': 'api:read api:write', 'api://other': 'api:read' },
  'cc-readonly': { 'api://default': 'api:write' },
  'cc-short': { 'api://default': 'api:read api:write', 'api://opaque': 'api:read api:write', 'api://other': 'api:read' },
  'oidc-authz': { 'api://default': 'api:read api:write', 'api://opaque': 'api:read api:write', 'api://other': 'api:read' },
};

const GATEWAY_CLIENT = 'oidc-authz';
// The gateway registered as Okta recommends for service apps: public-key client authentication (private_key_jwt,
// RFC 7523). oidc-authz signs its assertions with the private half (tests/e2e/oidc-authz.template.toml,
// providers.okta_jwt.client_jwk: published, tests and demo only); no secret at all.
const GATEWAY_JWT_CLIENT = 'oidc-authz-service';
const GATEWAY_JWT_KEY = {
  'kty': 'RSA',
  'n': '2reucpk13jGqhXq9zILXboPIfMsqEDhnXi9CCVR5yaF4OIXr-GCwfe8W73e_acWiCB6fC0X81bVZyu69-YsnZzDllXzd_CUoUBJIpusWXsQzxVyovb5CyUPcOBxrgVGBqG7VF4gPkqPXEJwnTFxSmxur4RuPUEjWALwyLIy3jfrN7LKpP_qBpzRxCnYXzBeCdWpmol8d_l4qg1nqOWFGhef1C8pDqEvtwXAHVjHgNK1Ck19caImgBsmVZJ8Rw9Vgdar-yWl70pfAqkURL7JloXAnmJhiflexeg46e2vg0p2fBa6nZ_EkjzD7ztBHH9x7JVPVx48jvKSf72bgkxeswQ',
  'e': 'AQAB',
  'kid': 'oidc-authz-service-1',
  'alg': 'RS256',
  'use': 'sig',
};
const GATEWAYS = [GATEWAY_CLIENT, GATEWAY_JWT_CLIENT];
const OIDC_SCOPES = ['openid', 'profile', 'email', 'groups', 'offline_access'];

const ccClient = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
});

const CLIENTS = [
  ccClient('cc-app'),
  ccClient('cc-readonly'),
  ccClient('cc-short'),
  {
    client_id: GATEWAY_CLIENT,
    client_secret: `${GATEWAY_CLIENT}-secret`,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogoutRedirectUris,
    ...(backchannelLogoutUri
      ? { backchannel_logout_uri: backchannelLogoutUri, backchannel_logout_session_required: true }
      : {}),
    scope: OIDC_SCOPES.join(' '), // api:read / api:write are resource scopes, granted per resource
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
  },
  {
    client_id: GATEWAY_JWT_CLIENT,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [GATEWAY_JWT_KEY] },
  },
];

// ---------------------------------------------------------------- small helpers

const html = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${html(title)}</title></head>
<body><h1>${html(title)}</h1>
${body}
</body></html>`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new errors.InvalidRequest('request body too large');
    chunks.push(chunk);
  }
  return querystring.parse(Buffer.concat(chunks).toString('utf8'));
}

// Okta's scp: the granted resource scopes plus the OpenID scopes of the request that produced the token.
function scpFor(ctx, token) {
  const scopes = new Set(token.scope ? token.scope.split(' ') : []);
  const source = ctx?.oidc?.entities?.AuthorizationCode || ctx?.oidc?.entities?.RefreshToken;
  const all = source?.scope ? source.scope.split(' ') : [];
  const out = all.filter((s) => scopes.has(s) || OIDC_SCOPES.includes(s));
  for (const s of scopes) if (!out.includes(s)) out.push(s);
  return out;
}

// ---------------------------------------------------------------- provider

async function buildProvider(issuer) {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  jwk.kid = await calculateJwkThumbprint(jwk);
  jwk.alg = 'RS256';
  jwk.use = 'sig';
  const publicJwk = {
    kty: jwk.kty, n: jwk.n, e: jwk.e, kid: jwk.kid, alg: jwk.alg, use: jwk.use,
  };

  const provider = new Provider(issuer, {
    clients: CLIENTS,
    jwks: { keys: [jwk] },
    cookies: {
      // plain http on loopback: oidc-provider only sets `secure` when the request itself is https
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    routes: {
      authorization: '/v1/authorize',
      token: '/v1/token',
      introspection: '/v1/introspect',
      jwks: '/v1/keys',
      end_session: '/v1/logout',
      userinfo: '/v1/userinfo',
      revocation: '/v1/revoke',
      pushed_authorization_request: '/v1/par',
      device_authorization: '/v1/device/authorize',
      code_verification: '/v1/device',
      backchannel_authentication: '/v1/bc/authorize',
      registration: '/v1/clients',
      challenge: '/v1/challenge',
      credential: '/v1/credential',
    },
    scopes: OIDC_SCOPES,
    claims: {
      acr: null,
      sid: null,
      auth_time: null,
      iss: null,
      openid: ['sub'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // Okta puts the scope-requested claims (email, name, groups) in the ID token too
    conformIdTokenClaims: false,
    pkce: { required: () => true }, // S256 is the only method oidc-provider accepts
    responseTypes: ['code'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    // Outgoing calls (the back-channel logout POSTs) go to loopback RPs here: oidc-provider refuses special-use
    // addresses (its SSRF guard rides on `options.dispatcher`); this mock, for tests and the demo only, allows them.
    fetch: (url, options) => {
      const { dispatcher, ...rest } = options;
      return fetch(url, rest);
    },
    features: {
      devInteractions: { enabled: false }, // replaced by the interaction routes below
      clientCredentials: { enabled: true },
      backchannelLogout: { enabled: true },
      introspection: {
        enabled: true,
        // the gateway's client may introspect any token; others only their own
        allowedPolicy: async (ctx, client, token) => GATEWAYS.includes(client.clientId)
          || token.clientId === client.clientId,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (ctx, client, token) => {
          if (GATEWAYS.includes(client.clientId) || token.clientId === client.clientId) return true;
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        },
      },
      rpInitiatedLogout: {
        enabled: true,
        // one form, auto-submitted in a browser; a script POSTs it (xsrf + logout=yes) to /v1/logout/confirm
        async logoutSource(ctx, form) {
          const withLogout = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
          ctx.body = page('Sign out', `${withLogout}
<noscript><button type="submit" form="op.logoutForm">Sign out</button></noscript>
<script>document.forms[0].submit()</script>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p>You have been signed out.</p>');
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => {
          if (oneOf) return oneOf.includes(DEFAULT_RESOURCE) ? DEFAULT_RESOURCE : oneOf[0];
          return DEFAULT_RESOURCE;
        },
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource, client) => {
          const rs = RESOURCES[resource];
          const allowed = CLIENT_RESOURCE_SCOPES[client.clientId]?.[resource];
          if (!rs || !allowed) throw new errors.InvalidTarget();
          const rsScopes = new Set(rs.scope.split(' '));
          return { ...rs, scope: allowed.split(' ').filter((s) => rsScopes.has(s)).join(' ') };
        },
      },
    },
    extraTokenClaims: async (ctx, token) => {
      const claims = { ver: 1, scp: scpFor(ctx, token), cid: token.clientId };
      if (!token.accountId) claims.sub = token.clientId; // Okta: sub of a client_credentials token = client_id
      if (token.accountId && USERS[token.accountId]) {
        claims.uid = token.accountId;
        claims.groups = [...USERS[token.accountId].groups];
        claims.kong_claim = [...USERS[token.accountId].kong_claim];
      }
      return claims;
    },
    // Okta: a refresh token exactly when offline_access was granted
    issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && code.scopes.has('offline_access'),
    rotateRefreshToken: () => false, // like an Okta web app's "persistent" refresh token: reusable until it expires
    findAccount: async (ctx, sub) => {
      if (!USERS[sub]) return undefined;
      return {
        accountId: sub,
        claims: async () => userClaims(sub),
      };
    },
    // The gateway's client is first-party: its requested scopes/claims/resource scopes are granted
    // without a consent page (login -> redirect straight back). Other clients keep the consent prompt.
    loadExistingGrant: async (ctx) => {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
      if (oidc.client.clientId !== GATEWAY_CLIENT) return grant;
      grant ||= new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
      grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
      if (oidc.requestParamClaims.size) grant.addOIDCClaims([...oidc.requestParamClaims]);
      for (const [indicator, rs] of Object.entries(oidc.resourceServers)) {
        const wanted = [...oidc.requestParamScopes].filter((s) => rs.scopes.has(s));
        if (wanted.length) grant.addResourceScope(indicator, wanted.join(' '));
      }
      await grant.save();
      return grant;
    },
    interactions: {
      policy: interactionPolicyFor(),
      url: async (ctx, interaction) => `${new URL(ctx.oidc.issuer).pathname.replace(/\/$/, '')}/interaction/${interaction.uid}`,
    },
    ttl: {
      AccessToken: () => accessTokenTTL,
      ClientCredentials: (ctx, token, client) => (client?.clientId === 'cc-short' ? SHORT_TTL : accessTokenTTL),
      AuthorizationCode: 300,
      IdToken: 3600,
      RefreshToken: 30 * 24 * 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 30 * 24 * 3600,
      DeviceCode: 600,
      BackchannelAuthenticationRequest: 600,
      PreAuthorizedCode: 600,
    },
    clientBasedCORS: () => true,
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre>${html(JSON.stringify(out, null, 2))}</pre>`);
    },
  });
  provider.proxy = true; // honour X-Forwarded-Proto/Host when put behind a proxy

  provider.use(offlineAccessLikeOkta);
  provider.use(interactionRoutes);
  provider.use(clientCredentialsDefaultScope);
  provider.use(userinfoShim(publicJwk, issuer));
  return provider;
}

// ---------------------------------------------------------------- offline_access without prompt=consent

// OpenID Connect (and oidc-provider) drop `offline_access` unless the request has prompt=consent; Okta
// does not. So an authorize request asking for offline_access gets `consent` added to its prompt, and the
// consent prompt's "prompt=consent was asked" check is skipped for the first-party gateway client
// (its grant is made by loadExistingGrant), so no consent page appears for it.
async function offlineAccessLikeOkta(ctx, next) {
  if (ctx.method === 'GET' && ctx.path === '/v1/authorize') {
    const q = new URLSearchParams(ctx.querystring);
    const scopes = (q.get('scope') || '').split(' ');
    const prompts = (q.get('prompt') || '').split(' ').filter(Boolean);
    if (scopes.includes('offline_access') && !prompts.includes('consent') && !prompts.includes('none')) {
      q.set('prompt', [...prompts, 'consent'].join(' '));
      ctx.querystring = q.toString();
      ctx.req.originalUrl = `${ISSUER_PATH}${ctx.url}`; // oidc-provider derives its mount path from it
    }
  }
  return next();
}

function interactionPolicyFor() {
  const { base, Check } = interactionPolicy;
  const policy = base();
  const consent = policy.get('consent');
  consent.checks.remove('consent_prompt');
  consent.checks.add(new Check(
    'consent_prompt',
    'consent prompt was not resolved',
    'consent_required',
    (ctx) => ctx.oidc.client.clientId !== GATEWAY_CLIENT
      && ctx.oidc.prompts.has('consent') && ctx.oidc.promptPending('consent'),
  ), 0);
  return policy;
}

// ---------------------------------------------------------------- login / consent pages

function loginForm(action, { login = '', error } = {}) {
  return page('Sign in', `${error ? `<p class="error" id="error">${html(error)}</p>` : ''}
<form method="post" action="${html(action)}" autocomplete="off">
  <input type="hidden" name="prompt" value="login"/>
  <label>Username <input required type="text" name="login" value="${html(login)}" autofocus/></label>
  <label>Password <input required type="password" name="password"/></label>
  <button type="submit">Sign in</button>
</form>`);
}

function consentForm(action, client, details) {
  const items = [
    ...(details.missingOIDCScope || []),
    ...(details.missingOIDCClaims || []),
    ...Object.entries(details.missingResourceScopes || {}).map(([rs, s]) => `${rs}: ${s.join(' ')}`),
  ];
  return page('Authorize', `<p>${html(client.clientId)} asks for:</p>
<ul>${items.map((i) => `<li>${html(i)}</li>`).join('')}</ul>
<form method="post" action="${html(action)}">
  <input type="hidden" name="prompt" value="consent"/>
  <button type="submit">Allow</button>
</form>`);
}

const INTERACTION_RE = /^\/interaction\/([A-Za-z0-9_-]+)(\/abort)?$/;

async function interactionRoutes(ctx, next) {
  const m = INTERACTION_RE.exec(ctx.path);
  if (!m) return next();
  const provider = ctx.app;
  const [, uid, abort] = m;
  ctx.set('cache-control', 'no-store');

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', `<p>${html(err.message)}</p>`);
    return undefined;
  }
  if (details.uid !== uid) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', '<p>interaction id does not match the interaction cookie</p>');
    return undefined;
  }
  const action = `${ISSUER_PATH}/interaction/${uid}`;
  const { prompt, params } = details;
  const client = await provider.Client.find(params.client_id);

  const finish = async (result, merge) => {
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge });
    ctx.status = 303;
    ctx.redirect(returnTo);
  };

  if (abort && ctx.method === 'GET') {
    return finish({ error: 'access_denied', error_description: 'End-User aborted interaction' }, false);
  }

  if (ctx.method === 'GET' && !abort) {
    ctx.type = 'html';
    if (prompt.name === 'login') {
      ctx.body = loginForm(action, { login: params.login_hint });
    } else if (prompt.name === 'consent') {
      ctx.body = consentForm(action, client, prompt.details);
    } else {
      ctx.status = 501;
      ctx.body = page('Error', `<p>prompt ${html(prompt.name)} not implemented</p>`);
    }
    return undefined;
  }

  if (ctx.method === 'POST' && !abort) {
    const body = await readForm(ctx.req);
    if (body.prompt === 'login' && prompt.name === 'login') {
      const accountId = lookupLogin(body.login);
      if (!accountId) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = loginForm(action, { login: body.login, error: 'Unknown user: sign-in failed' });
        return undefined;
      }
      return finish({ login: { accountId } }, false);
    }
    if (body.prompt === 'consent' && prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      const d = prompt.details;
      if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      return finish({ consent: { grantId: await grant.save() } }, true);
    }
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', `<p>expected prompt=${html(prompt.name)}</p>`);
    return undefined;
  }

  ctx.status = 405;
  return undefined;
}

// ---------------------------------------------------------------- client credentials without scope

// Like an Okta authorization server with default scopes: a client_credentials request without `scope`
// gets every scope the client may have on the resource. oidc-provider would otherwise issue no scope.
async function clientCredentialsDefaultScope(ctx, next) {
  if (ctx.method === 'POST' && ctx.path === '/v1/token' && ctx.is('application/x-www-form-urlencoded')) {
    let body;
    try {
      body = await readForm(ctx.req);
    } catch {
      ctx.status = 400;
      ctx.body = { error: 'invalid_request', error_description: 'failed to parse the request body' };
      return undefined;
    }
    if (body.grant_type === 'client_credentials' && !body.scope) {
      body.scope = 'api:read api:write'; // filtered down to what this client may have on the resource
    }
    ctx.req.body = body; // oidc-provider reads an already parsed body from req.body
  }
  return next();
}

// ---------------------------------------------------------------- userinfo

// oidc-provider's userinfo refuses any access token that has an audience, but the access token of an
// Okta authorization-code login is the api://default one, which Okta's /v1/userinfo accepts.
function userinfoShim(publicJwk, issuer) {
  return async function userinfo(ctx, next) {
    if (ctx.path !== '/v1/userinfo' || !['GET', 'POST'].includes(ctx.method)) return next();
    const provider = ctx.app;
    const deny = (status, error, description) => {
      ctx.status = status;
      ctx.set('cache-control', 'no-store');
      ctx.set('www-authenticate', `Bearer realm="${issuer}", error="${error}", error_description="${description}"`);
      ctx.body = { error, error_description: description };
    };
    const auth = ctx.get('authorization');
    const m = /^Bearer\s+(\S+)$/i.exec(auth || '');
    if (!m) return deny(401, 'invalid_token', 'no access token provided');
    const value = m[1];
    // JWT access tokens are stateless in oidc-provider (never stored): verify them with the signing key;
    // opaque ones are looked up. Either way the OpenID scopes come from the token's Okta `scp` claim.
    let accountId;
    let scp;
    let isJwt = false;
    try { isJwt = !!decodeProtectedHeader(value); } catch { /* opaque */ }
    if (isJwt) {
      try {
        const { payload } = await jwtVerify(value, publicJwk, { issuer, typ: 'at+jwt' });
        accountId = payload.uid;
        scp = payload.scp;
      } catch {
        return deny(401, 'invalid_token', 'invalid access token');
      }
    } else {
      const token = await provider.AccessToken.find(value);
      if (token?.isValid) {
        accountId = token.accountId;
        scp = token.extra?.scp;
      }
    }
    if (!accountId || !USERS[accountId]) return deny(401, 'invalid_token', 'invalid access token');
    const scopes = new Set(Array.isArray(scp) ? scp : []);
    if (!scopes.has('openid')) return deny(403, 'insufficient_scope', 'access token missing openid scope');
    const all = userClaims(accountId);
    const out = { sub: all.sub };
    if (scopes.has('profile')) {
      Object.assign(out, {
        name: all.name, given_name: all.given_name, family_name: all.family_name,
        preferred_username: all.preferred_username,
      });
    }
    if (scopes.has('email')) Object.assign(out, { email: all.email, email_verified: all.email_verified });
    if (scopes.has('groups')) out.groups = all.groups;
    ctx.set('cache-control', 'no-store');
    ctx.body = out;
    return undefined;
  };
}

// ---------------------------------------------------------------- http server

let provider;
let callback;

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (!callback || !(path === ISSUER_PATH || path.startsWith(`${ISSUER_PATH}/`))) {
    res.statusCode = 404;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ errorCode: 'E0000022', errorSummary: 'The endpoint does not support the provided HTTP method', error: 'not_found' }));
    return;
  }
  // mount the provider under the issuer path, the way koa-mount does (oidc-provider derives its mount
  // path from req.originalUrl)
  req.originalUrl = req.url;
  req.url = req.url.slice(ISSUER_PATH.length) || '/';
  if (req.url.startsWith('?')) req.url = `/${req.url}`;
  callback(req, res);
});
server.keepAliveTimeout = 5000;

server.on('error', (err) => {
  console.error(`okta-mock-idp: ${err.message}`);
  process.exit(1);
});

server.listen(port, host, async () => {
  try {
    const actualPort = server.address().port;
    const issuerHost = process.env.OKTA_MOCK_ISSUER_HOST || `127.0.0.1:${actualPort}`;
    const issuer = `http://${issuerHost}${ISSUER_PATH}`;
    provider = await buildProvider(issuer);
    provider.on('server_error', (ctx, err) => console.error('okta-mock-idp server_error:', err));
    provider.on('backchannel.error', (ctx, err, client) => console.error(`okta-mock-idp backchannel logout to ${client.clientId} failed:`, err.message, err.cause?.message ?? ''));
    provider.on('backchannel.success', (ctx, client) => console.error(`okta-mock-idp backchannel logout sent to ${client.clientId}`));
    callback = provider.callback();
    process.stdout.write(`okta-mock-idp ready issuer=${issuer}\n`);
  } catch (err) {
    console.error('okta-mock-idp: failed to start:', err);
    process.exit(1);
  }
});

function shutdown(signal) {
  console.error(`okta-mock-idp: ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
