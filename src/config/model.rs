//! The validated configuration every module reads: typed, cross-referenced, nothing left to parse.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use url::Url;

use crate::login::cookie::CookieCodec;
use crate::policy::access::AccessRules;
use crate::policy::routes::RouteTable;

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret in clear, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (default; for log pipelines).
    Json,
    /// Human-friendly lines.
    Pretty,
}

/// Listener and process settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the ext_authz gRPC service and grpc.health.v1 listen.
    pub grpc_addr: SocketAddr,
    /// Where /healthz, /readyz and /metrics listen.
    pub admin_addr: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// Bound on verified tokens kept in memory (0 disables the cache: every request checks a signature).
    pub token_cache_entries: u64,
    /// How long in-flight Checks may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// The longest one Check may take (IdP calls included) before it is answered 503; keep it below Envoy's
    /// ext_authz timeout so the answer is always ours, never Envoy's failure mode.
    pub check_timeout: Duration,
}

/// One OpenID provider, as configured (endpoints may still come from discovery).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The name under `[providers.NAME]`.
    pub name: String,
    /// The issuer URL exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// This service's client at the provider (login, introspection).
    pub client_id: Option<String>,
    /// The secret of `client_id`, from the config, the env or `client_secret_file`.
    pub client_secret: Option<Secret>,
    /// Accepted `aud` values of access tokens (empty: any audience, `aud` not checked).
    pub audiences: Vec<String>,
    /// Endpoint overrides; each wins over discovery.
    pub jwks_uri: Option<Url>,
    /// Token endpoint override.
    pub token_endpoint: Option<Url>,
    /// Introspection endpoint override.
    pub introspection_endpoint: Option<Url>,
    /// Authorization endpoint override.
    pub authorization_endpoint: Option<Url>,
    /// End-session endpoint override.
    pub end_session_endpoint: Option<Url>,
    /// Userinfo endpoint override (the `userinfo` auth method); https unless the issuer is http on loopback.
    pub userinfo_endpoint: Option<Url>,
    /// Clock skew allowed on exp/nbf/iat.
    pub leeway_secs: u64,
    /// Timeout of each HTTP call to the provider.
    pub http_timeout: Duration,
    /// Period of the background JWKS refresh.
    pub jwks_refresh: Duration,
    /// Least time between two JWKS fetches caused by an unknown `kid`.
    pub jwks_min_refetch: Duration,
    /// How to authenticate at the token, introspection and revocation endpoints (`client_auth`, alias
    /// `token_endpoint_auth_method`); `None`: as discovery says (basic preferred).
    pub token_endpoint_auth_method: Option<TokenEndpointAuth>,
    /// The private key of `client_auth = "private_key_jwt"` (from `client_jwk` or `client_jwk_file`); `Debug`
    /// never shows it.
    pub client_key: Option<crate::provider::assertion::ClientKey>,
    /// This many client-credentials grants of one client id refused as `invalid_client` within `client_lockout`
    /// lock that client id out for `client_lockout` (0: never).
    pub client_lockout_threshold: u32,
    /// The window in which refusals are counted, and how long a lock-out lasts.
    pub client_lockout: Duration,
    /// Client-credentials grants per second sent to the token endpoint, across every client.
    pub client_credentials_rate: u32,
    /// Grants that may be sent at once before `client_credentials_rate` applies.
    pub client_credentials_burst: u32,
}

/// Client authentication at the token, introspection and revocation endpoints (Kong's `client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEndpointAuth {
    /// `Authorization: Basic` (RFC 6749 2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT assertion (RFC 7523) signed HS256 with the client secret.
    ClientSecretJwt,
    /// A JWT assertion (RFC 7523) signed with the private key `client_jwk`.
    PrivateKeyJwt,
}

impl TokenEndpointAuth {
    /// Every method with its name (config values, discovery's `token_endpoint_auth_methods_supported`).
    pub const ALL: [(TokenEndpointAuth, &'static str); 4] = [
        (TokenEndpointAuth::ClientSecretBasic, "client_secret_basic"),
        (TokenEndpointAuth::ClientSecretPost, "client_secret_post"),
        (TokenEndpointAuth::ClientSecretJwt, "client_secret_jwt"),
        (TokenEndpointAuth::PrivateKeyJwt, "private_key_jwt"),
    ];

    /// The method of a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(m, _)| *m)
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("client_secret_basic", |(_, n)| n)
    }
}

/// The auth methods of Kong's `auth_methods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuthMethod {
    /// `Authorization: Bearer <JWT>` verified locally.
    Bearer,
    /// RFC 7662 token introspection.
    Introspection,
    /// Client credentials grant from `Authorization: Basic`.
    ClientCredentials,
    /// Browser login.
    AuthorizationCode,
    /// Session cookie.
    Session,
    /// An opaque token checked by a call to the provider's userinfo endpoint (Kong's `userinfo`).
    Userinfo,
}

impl AuthMethod {
    /// Every auth method with its name in config, metrics and logs, in declaration order: the one table of the
    /// names, which [`AuthMethod::as_str`], [`AuthMethod::parse`], the config error and the metric labels read.
    pub const ALL: [(AuthMethod, &'static str); 6] = [
        (AuthMethod::Bearer, "bearer"),
        (AuthMethod::Introspection, "introspection"),
        (AuthMethod::ClientCredentials, "client_credentials"),
        (AuthMethod::AuthorizationCode, "authorization_code"),
        (AuthMethod::Session, "session"),
        (AuthMethod::Userinfo, "userinfo"),
    ];

    /// The name used in config, metrics and logs.
    pub const fn as_str(self) -> &'static str {
        // `ALL` is in declaration order (checked at compile time below), so a method's entry is at its index; a
        // method missing from `ALL` would read `-` (the test `every_auth_method_is_in_the_table` refuses that).
        let i = self as usize;
        if i < Self::ALL.len() {
            Self::ALL[i].1
        } else {
            "-"
        }
    }

    /// The method with this config name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(m, _)| *m)
    }

    /// The names, comma-separated, for messages.
    pub fn names() -> String {
        Self::ALL.map(|(_, name)| name).join(", ")
    }
}

// `AuthMethod::ALL` lists every method at the index of its discriminant.
const _: () = {
    let mut i = 0;
    while i < AuthMethod::ALL.len() {
        assert!(AuthMethod::ALL[i].0 as usize == i);
        i += 1;
    }
};

/// One claim copied into one upstream header.
#[derive(Debug, Clone)]
pub struct UpstreamHeader {
    /// Claim path (nested object keys).
    pub claim: Vec<String>,
    /// Header to set (lower-case).
    pub name: HeaderName,
}

/// A named policy: how to authenticate, what to require, what to inject.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The name under `[policies.NAME]`.
    pub name: String,
    /// Index into [`Config::providers`]: the policy's first provider, used by introspection of opaque tokens,
    /// client credentials and the browser login.
    pub provider: usize,
    /// Indexes into [`Config::providers`] of every provider whose tokens the policy accepts, in config order
    /// (`providers = [...]`, or just `provider`); a JWT's `iss` picks one. The first is [`Policy::provider`].
    pub providers: Vec<usize>,
    /// Accepted ways to authenticate, in config order.
    pub auth_methods: Vec<AuthMethod>,
    /// Claim requirements (scopes, groups, roles, audience).
    pub access: AccessRules,
    /// Claims to inject as upstream headers.
    pub upstream_headers: Vec<UpstreamHeader>,
    /// Send JWTs to introspection too (otherwise verified locally).
    pub introspect_jwt_tokens: bool,
    /// Allows carry `dynamic_metadata` (sub, iss, client_id, policy, auth_method, consumer): default true. Off, an
    /// allow carries none, which saves Envoy decoding and merging it on every request (measured in BENCHMARKS.md).
    pub dynamic_metadata: bool,
    /// The policy accepts tokens for any audience: its provider may have no `audiences` (otherwise a config
    /// error for a policy allowing `bearer` or `introspection`).
    pub allow_any_audience: bool,
    /// Positive introspection cache lifetime (0 = ask every time).
    pub cache_introspection_secs: u64,
    /// Negative introspection cache lifetime.
    pub cache_ttl_neg_secs: u64,
    /// Scopes requested at login and in client credentials.
    pub scopes: Vec<String>,
    /// Path that logs the user out.
    pub logout_path: Option<String>,
    /// Session cookie keys, newest first.
    pub session_secrets: Vec<Secret>,
    /// Client credentials may also come from these request headers (Kong's `client_credentials_param_type =
    /// ["header"]` with `client_arg` / `client_secret_arg`); `None`: only `Authorization: Basic`.
    pub client_credential_headers: Option<(HeaderName, HeaderName)>,
    /// Where a bearer token is read (Kong's `bearer_token_param_type`, default `["header"]`, and
    /// `bearer_token_cookie_name`).
    pub bearer_token_places: crate::credentials::token_places::TokenPlaces,
    /// Browser login and sessions (present when the policy allows `authorization_code` or `session`).
    pub login: Option<LoginSettings>,
    /// Every request header this policy sets or promises to control upstream (claim headers, `authorization`
    /// when it sends one, the ID-token and client-credential headers), lower case: on an allow, a client-sent
    /// header spelled like one of these (any case, `_` for `-`) never reaches the upstream.
    pub controlled_headers: Vec<HeaderName>,
    /// `upstream_user_info_header`: on an allow by the `userinfo` method, the userinfo answer as base64url (no
    /// padding) JSON in this header (lower case); a controlled header.
    pub upstream_user_info_header: Option<HeaderName>,
    /// Positive userinfo cache lifetime (`cache_user_info_secs`, default `cache_introspection_secs`; 0 = ask
    /// every time). Refusals are kept `cache_ttl_neg_secs`.
    pub cache_user_info_secs: u64,
    /// Where the access token goes upstream (Kong's `upstream_access_token_header`, default
    /// `authorization:bearer`).
    pub upstream_access_token_header: TokenHeader,
    /// Header carrying the introspection answer (base64url JSON) on an allow by `introspection`.
    pub upstream_introspection_header: Option<HeaderName>,
    /// Header carrying the consumer (the value of `consumer_claim`).
    pub upstream_consumer_header: Option<HeaderName>,
    /// What 401 and 403 answers tell the client (`display_errors` and the two messages).
    pub error_answers: ErrorAnswers,
}

/// Kong's `header[:prefix]` for a token sent upstream: `authorization:bearer` is `Authorization: Bearer <token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The header, lower case.
    pub name: HeaderName,
    /// The word before the token and a space (`bearer` is written `Bearer`); `None`: the token alone.
    pub prefix: Option<String>,
}

impl Default for TokenHeader {
    fn default() -> Self {
        TokenHeader {
            name: http::header::AUTHORIZATION,
            prefix: Some("Bearer".into()),
        }
    }
}

impl TokenHeader {
    /// Whether this is the default, `Authorization: Bearer` (no allocation: read on every allow).
    pub fn is_default(&self) -> bool {
        self.is_authorization() && self.prefix.as_deref() == Some("Bearer")
    }

    /// Whether the token goes in `Authorization` (the client's own `Authorization` then goes upstream as it is).
    pub fn is_authorization(&self) -> bool {
        self.name == http::header::AUTHORIZATION
    }

    /// The header value for `token`.
    pub fn value(&self, token: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p} {token}"),
            None => token.to_string(),
        }
    }
}

/// What 401 and 403 answers say (Kong's `display_errors`, `unauthorized_error_message`, `forbidden_error_message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswers {
    /// `true`: the body and challenge say which check failed; `false` (default): only the messages below (the
    /// reason still goes to the log line).
    pub display: bool,
    /// The `error_description` of a 401 when the detail is hidden (default `Unauthorized`).
    pub unauthorized: String,
    /// The `error_description` of a 403 when the detail is hidden (default `Forbidden`).
    pub forbidden: String,
}

impl Default for ErrorAnswers {
    fn default() -> Self {
        ErrorAnswers {
            display: false,
            unauthorized: "Unauthorized".into(),
            forbidden: "Forbidden".into(),
        }
    }
}

/// Where a session's claims come from, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsSource {
    /// The access token's claims (when it is a JWT).
    AccessToken,
    /// The ID token's claims.
    IdToken,
}

/// Settings of the browser login and its session.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// The callback URL registered at the provider; its path is the callback path.
    pub redirect_uri: Url,
    /// Name of the session cookie (chunks get `_0`, `_1`, ...).
    pub cookie_name: String,
    /// A session unused this long ends.
    pub idle_timeout: u64,
    /// A session ends this long after login, whatever happens.
    pub absolute_timeout: u64,
    /// Refresh the access token when it has less than this many seconds left.
    pub refresh_leeway: u64,
    /// Where the provider sends the browser after logout.
    pub post_logout_redirect_uri: Option<Url>,
    /// Claims precedence for access control and headers.
    pub claims_source: Vec<ClaimsSource>,
    /// Send the session's access token upstream as `Authorization: Bearer`.
    pub upstream_access_token: bool,
    /// Send the session's ID token upstream in this header.
    pub upstream_id_token_header: Option<HeaderName>,
    /// Request methods that log out at `logout_path` (Kong's `logout_methods`; upper case). GET is honoured only
    /// for a same-origin navigation.
    pub logout_methods: Vec<String>,
    /// Revoke the session's refresh and access tokens at the provider's `revocation_endpoint` at logout.
    pub logout_revoke: bool,
    /// Where the provider POSTs OpenID Connect Back-Channel Logout tokens (Envoy must send the body there).
    pub backchannel_logout_path: Option<String>,
    /// Seals and opens the session and login cookies, keyed by the policy's `session_secrets`; built during
    /// validation, so a login policy always has one.
    pub codec: CookieCodec,
    /// Where its sessions live (`session_storage`).
    pub session_storage: SessionStorage,
}

/// Where a login policy's sessions live (`session_storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionStorage {
    /// `cookie` (default): the whole session sealed in the session cookie.
    #[default]
    Cookie,
    /// `store`: the session in the shared store; the cookie holds only its sealed id.
    Store,
}

impl Policy {
    /// Whether the policy accepts a method.
    pub fn allows(&self, m: AuthMethod) -> bool {
        self.auth_methods.contains(&m)
    }
}

/// Where shared state lives (`[store]`).
#[derive(Debug, Clone)]
pub enum StoreBackendConfig {
    /// This process's memory (the default: one replica).
    Memory,
    /// Redis: one node, or a Redis Cluster reached through any of `nodes`.
    Redis {
        /// `redis://` or `rediss://` URLs.
        nodes: Vec<String>,
        /// A Redis Cluster.
        cluster: bool,
    },
}

/// `[store]`: state shared between replicas.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The backend.
    pub backend: StoreBackendConfig,
    /// Every key starts with this.
    pub key_prefix: String,
    /// Seals values at rest (AES-256-GCM), keyed by `secret`; required with Redis.
    pub codec: Option<CookieCodec>,
    /// The longest one store operation may take before it counts as failed.
    pub timeout: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackendConfig::Memory,
            key_prefix: "oidc-authz:".into(),
            codec: None,
            timeout: std::time::Duration::from_millis(250),
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners and process settings.
    pub server: ServerConfig,
    /// Providers, ordered by name.
    pub providers: Arc<[ProviderConfig]>,
    /// Policies, ordered by name.
    pub policies: Arc<[Policy]>,
    /// Where shared state lives.
    pub store: StoreConfig,
    /// Routes used when Envoy names no policy.
    pub routes: RouteTable,
    /// Things that are allowed but probably wrong (printed by `check-config`, logged at start).
    pub warnings: Vec<String>,
}

impl Config {
    /// The policy with this name.
    pub fn policy_index(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_auth_method_is_in_the_table() {
        // A method added to the enum stops this match from compiling until it is listed here and in `ALL`.
        let all = [
            AuthMethod::Bearer,
            AuthMethod::Introspection,
            AuthMethod::ClientCredentials,
            AuthMethod::AuthorizationCode,
            AuthMethod::Session,
            AuthMethod::Userinfo,
        ];
        for m in all {
            match m {
                AuthMethod::Bearer
                | AuthMethod::Introspection
                | AuthMethod::ClientCredentials
                | AuthMethod::AuthorizationCode
                | AuthMethod::Session
                | AuthMethod::Userinfo => {}
            }
            assert_ne!(m.as_str(), "-", "{m:?}");
            assert_eq!(AuthMethod::parse(m.as_str()), Some(m));
        }
        assert_eq!(AuthMethod::ALL.len(), all.len());
        assert_eq!(
            AuthMethod::names(),
            "bearer, introspection, client_credentials, authorization_code, session, userinfo"
        );
        assert_eq!(AuthMethod::parse("magic"), None);
    }
}
