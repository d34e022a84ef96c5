//! Configuration: figment (file + `OIDC_AUTHZ_` env) -> raw serde structs -> one validated, typed [`Config`].
//!
//! Everything that can be checked at load time is checked here (URLs parsed, regexes compiled, header names
//! validated, names cross-referenced), and every problem is collected so that `check-config` lists them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml, Yaml};
use figment::value::Value;
use http::HeaderName;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::policy::access::{AccessRules, Requirement};
use crate::policy::routes::{HostMatch, PathMatch, Route, RouteTable};

/// Environment variable that may name the config file.
pub const CONFIG_ENV: &str = "OIDC_AUTHZ_CONFIG";
/// Prefix of environment overrides (`OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET`).
pub const ENV_PREFIX: &str = "OIDC_AUTHZ_";

/// The largest accepted bearer token, in bytes; anything longer is refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem found in the configuration. `kind()` names the class for tests and tooling.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read or parsed at all.
    #[error("cannot load configuration: {0}")]
    Load(String),
    /// A key that no part of the configuration knows.
    #[error("unknown key `{0}`")]
    UnknownKey(String),
    /// A value has the wrong type or a required field is absent.
    #[error("{section}: {message}")]
    Invalid { section: String, message: String },
    /// A required field is missing.
    #[error("{section}: missing `{field}`")]
    Missing {
        section: String,
        field: &'static str,
    },
    /// A policy names a provider that is not configured.
    #[error("{section}: unknown provider `{name}`")]
    UnknownProvider { section: String, name: String },
    /// A route or default names a policy that is not configured.
    #[error("{section}: unknown policy `{name}`")]
    UnknownPolicy { section: String, name: String },
    /// An auth method that oidc-authz does not know.
    #[error(
        "{section}: unknown auth method `{name}` (known: bearer, introspection, client_credentials, authorization_code, session)"
    )]
    UnknownAuthMethod { section: String, name: String },
    /// `upstream_headers_claims` and `upstream_headers_names` differ in length.
    #[error(
        "{section}: upstream_headers_claims has {claims} entries but upstream_headers_names has {names}"
    )]
    HeaderLengthMismatch {
        section: String,
        claims: usize,
        names: usize,
    },
    /// Not a valid HTTP header name.
    #[error("{section}: `{name}` is not a valid header name")]
    BadHeaderName { section: String, name: String },
    /// Not a valid URL (or not http/https).
    #[error("{section}: `{field}` is not a valid http(s) URL: {reason}")]
    BadUrl {
        section: String,
        field: &'static str,
        reason: String,
    },
    /// A `path_regex` that does not compile.
    #[error("{section}: bad path_regex: {reason}")]
    BadRegex { section: String, reason: String },
    /// A listen address that is not `ip:port`.
    #[error("server: `{field}` is not an ip:port address: {value}")]
    BadAddr { field: &'static str, value: String },
    /// A secret file that cannot be read.
    #[error("{section}: cannot read client_secret_file {path}: {reason}")]
    SecretFile {
        section: String,
        path: String,
        reason: String,
    },
    /// Two settings that cannot both be given, or a value out of range.
    #[error("{section}: {message}")]
    Conflict { section: String, message: String },
    /// A token policy on a provider without `audiences`: it would accept every token of the issuer.
    #[error(
        "{section}: provider `{provider}` has no `audiences`, so this policy would accept any token of the issuer, including tokens meant for other applications; list the accepted `aud` values in providers.{provider}.audiences, or set allow_any_audience = true on the policy"
    )]
    NoAudiences { section: String, provider: String },
}

impl ConfigError {
    /// A short stable name for the class of error.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Load(_) => "load",
            ConfigError::UnknownKey(_) => "unknown_key",
            ConfigError::Invalid { .. } => "invalid_value",
            ConfigError::Missing { .. } => "missing_field",
            ConfigError::UnknownProvider { .. } => "unknown_provider",
            ConfigError::UnknownPolicy { .. } => "unknown_policy",
            ConfigError::UnknownAuthMethod { .. } => "unknown_auth_method",
            ConfigError::HeaderLengthMismatch { .. } => "header_length_mismatch",
            ConfigError::BadHeaderName { .. } => "bad_header_name",
            ConfigError::BadUrl { .. } => "bad_url",
            ConfigError::BadRegex { .. } => "bad_regex",
            ConfigError::BadAddr { .. } => "bad_addr",
            ConfigError::SecretFile { .. } => "secret_file",
            ConfigError::Conflict { .. } => "conflict",
            ConfigError::NoAudiences { .. } => "no_audiences",
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, thiserror::Error)]
pub struct InvalidConfig(pub Vec<ConfigError>);

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} error(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) shapes
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct RawServer {
    grpc_addr: Option<String>,
    admin_addr: Option<String>,
    log_format: Option<String>,
    token_cache_entries: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    check_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RawProvider {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    audiences: Vec<String>,
    jwks_uri: Option<String>,
    token_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    leeway_secs: Option<u64>,
    http_timeout_ms: Option<u64>,
    jwks_refresh_secs: Option<u64>,
    jwks_min_refetch_secs: Option<u64>,
    token_endpoint_auth_method: Option<String>,
    client_lockout_threshold: Option<u32>,
    client_lockout_secs: Option<u64>,
    client_credentials_rate: Option<u32>,
    client_credentials_burst: Option<u32>,
}

#[derive(Deserialize)]
struct RawPolicy {
    provider: Option<String>,
    #[serde(default)]
    auth_methods: Vec<String>,
    scopes_claim: Option<Vec<String>>,
    #[serde(default)]
    scopes_required: Vec<String>,
    groups_claim: Option<Vec<String>>,
    #[serde(default)]
    groups_required: Vec<String>,
    roles_claim: Option<Vec<String>>,
    #[serde(default)]
    roles_required: Vec<String>,
    audience_claim: Option<Vec<String>>,
    #[serde(default)]
    audience_required: Vec<String>,
    #[serde(default)]
    upstream_headers_claims: Vec<String>,
    #[serde(default)]
    upstream_headers_names: Vec<String>,
    #[serde(default)]
    introspect_jwt_tokens: bool,
    #[serde(default)]
    allow_any_audience: bool,
    cache_introspection_secs: Option<u64>,
    cache_ttl_neg_secs: Option<u64>,
    #[serde(default)]
    scopes: Vec<String>,
    redirect_uri: Option<String>,
    logout_path: Option<String>,
    session_secret: Option<SecretList>,
    #[serde(default)]
    client_credentials_param_type: Vec<String>,
    client_arg: Option<String>,
    client_secret_arg: Option<String>,
    session_cookie_name: Option<String>,
    session_idle_timeout_secs: Option<u64>,
    session_absolute_timeout_secs: Option<u64>,
    refresh_leeway_secs: Option<u64>,
    post_logout_redirect_uri: Option<String>,
    session_claims_source: Option<Vec<String>>,
    upstream_access_token: Option<bool>,
    upstream_id_token_header: Option<String>,
    logout_methods: Option<Vec<String>>,
    logout_revoke: Option<bool>,
}

/// `session_secret` may be one secret or a list (newest first).
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretList {
    One(Secret),
    Many(Vec<Secret>),
}

#[derive(Deserialize)]
struct RawRoute {
    #[serde(default)]
    hosts: Vec<String>,
    path_prefix: Option<String>,
    path_exact: Option<String>,
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    policy: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated shapes
// ---------------------------------------------------------------------------------------------

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
    /// Clock skew allowed on exp/nbf/iat.
    pub leeway_secs: u64,
    /// Timeout of each HTTP call to the provider.
    pub http_timeout: Duration,
    /// Period of the background JWKS refresh.
    pub jwks_refresh: Duration,
    /// Least time between two JWKS fetches caused by an unknown `kid`.
    pub jwks_min_refetch: Duration,
    /// How to authenticate at the token endpoint; `None`: as discovery says (basic preferred).
    pub token_endpoint_auth_method: Option<TokenEndpointAuth>,
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

/// Client authentication at the token and introspection endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEndpointAuth {
    /// `Authorization: Basic` (RFC 6749 2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
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
}

impl AuthMethod {
    /// The name used in config, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Bearer => "bearer",
            AuthMethod::Introspection => "introspection",
            AuthMethod::ClientCredentials => "client_credentials",
            AuthMethod::AuthorizationCode => "authorization_code",
            AuthMethod::Session => "session",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bearer" => AuthMethod::Bearer,
            "introspection" => AuthMethod::Introspection,
            "client_credentials" => AuthMethod::ClientCredentials,
            "authorization_code" => AuthMethod::AuthorizationCode,
            "session" => AuthMethod::Session,
            _ => return None,
        })
    }
}

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
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// Accepted ways to authenticate, in config order.
    pub auth_methods: Vec<AuthMethod>,
    /// Claim requirements (scopes, groups, roles, audience).
    pub access: AccessRules,
    /// Claims to inject as upstream headers.
    pub upstream_headers: Vec<UpstreamHeader>,
    /// Send JWTs to introspection too (otherwise verified locally).
    pub introspect_jwt_tokens: bool,
    /// The policy accepts tokens for any audience: its provider may have no `audiences` (otherwise a config
    /// error for a policy allowing `bearer` or `introspection`).
    pub allow_any_audience: bool,
    /// Positive introspection cache lifetime (0 = ask every time).
    pub cache_introspection_secs: u64,
    /// Negative introspection cache lifetime.
    pub cache_ttl_neg_secs: u64,
    /// Scopes requested at login and in client credentials.
    pub scopes: Vec<String>,
    /// Login callback URL.
    pub redirect_uri: Option<Url>,
    /// Path that logs the user out.
    pub logout_path: Option<String>,
    /// Session cookie keys, newest first.
    pub session_secrets: Vec<Secret>,
    /// Client credentials may also come from these request headers (Kong's `client_credentials_param_type =
    /// ["header"]` with `client_arg` / `client_secret_arg`); `None`: only `Authorization: Basic`.
    pub client_credential_headers: Option<(HeaderName, HeaderName)>,
    /// Browser login and sessions (present when the policy allows `authorization_code` or `session`).
    pub login: Option<LoginSettings>,
    /// Every request header this policy sets or promises to control upstream (claim headers, `authorization`
    /// when it sends one, the ID-token and client-credential headers), lower case: on an allow, a client-sent
    /// header spelled like one of these (any case, `_` for `-`) never reaches the upstream.
    pub controlled_headers: Vec<HeaderName>,
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
}

impl Policy {
    /// Whether the policy accepts a method.
    pub fn allows(&self, m: AuthMethod) -> bool {
        self.auth_methods.contains(&m)
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

    /// Loads a config file (TOML or YAML by extension) plus `OIDC_AUTHZ_` env overrides.
    pub fn load(path: &Path) -> Result<Config, InvalidConfig> {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::load_with_env(path, vars)
    }

    /// Loads a config file plus overrides from these environment variables (`load` passes the process's).
    pub fn load_with_env(
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, InvalidConfig> {
        let mut figment = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") | Some("yml") => Figment::from(Yaml::file_exact(path)),
            _ => Figment::from(Toml::file_exact(path)),
        };
        for (key, value) in env_overrides(vars) {
            figment = figment.merge(figment::providers::Serialized::default(&key, value));
        }
        Self::from_figment(figment)
    }

    /// Parses a TOML string (no env overrides); for tests and examples.
    pub fn from_toml(text: &str) -> Result<Config, InvalidConfig> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    /// Extracts and validates, collecting every error.
    pub fn from_figment(figment: Figment) -> Result<Config, InvalidConfig> {
        let value: Value = figment.extract().map_err(|e| {
            InvalidConfig(vec![ConfigError::Load(without_source_lines(
                &e.to_string(),
            ))])
        })?;
        let mut v = Validator::default();
        let cfg = v.config(&value);
        match cfg {
            Some(cfg) if v.errors.is_empty() => Ok(cfg),
            _ => Err(InvalidConfig(v.errors)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Validator {
    fn err(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    /// Deserializes one section, reporting every ignored (unknown) key under `prefix`.
    fn section<T: DeserializeOwned>(&mut self, prefix: &str, value: &Value) -> Option<T> {
        let mut unknown = Vec::new();
        let res = serde_ignored::deserialize(value, |path| {
            let p = path.to_string();
            unknown.push(if prefix.is_empty() {
                p
            } else {
                format!("{prefix}.{p}")
            });
        });
        for key in unknown {
            self.err(ConfigError::UnknownKey(key));
        }
        match res {
            Ok(v) => Some(v),
            Err(e) => {
                let mut msg = e.kind.to_string();
                if e.path.last().is_some_and(|k| is_secret_key(k)) {
                    msg = "must be a string (the value is a secret and not shown)".into();
                }
                if !e.path.is_empty() {
                    msg = format!("`{}`: {msg}", e.path.join("."));
                }
                self.err(ConfigError::Invalid {
                    section: prefix.to_string(),
                    message: msg,
                });
                None
            }
        }
    }

    fn config(&mut self, value: &Value) -> Option<Config> {
        let Some(root) = value.as_dict() else {
            self.err(ConfigError::Load("the configuration is not a table".into()));
            return None;
        };
        for key in root.keys() {
            if !matches!(key.as_str(), "server" | "providers" | "policies" | "routes") {
                self.err(ConfigError::UnknownKey(key.clone()));
            }
        }
        let server = match root.get("server") {
            Some(v) => self.section::<RawServer>("server", v),
            None => Some(RawServer::default()),
        };
        let server = server.and_then(|s| self.server(s));

        let mut providers = Vec::new();
        let mut declared_providers = BTreeSet::new();
        if let Some(p) = root.get("providers") {
            match p.as_dict() {
                Some(map) => {
                    for (name, v) in map {
                        declared_providers.insert(name.clone());
                        let section = format!("providers.{name}");
                        if let Some(raw) = self.section::<RawProvider>(&section, v)
                            && let Some(p) = self.provider(name, &section, raw)
                        {
                            providers.push(p);
                        }
                    }
                }
                None => self.err(ConfigError::Invalid {
                    section: "providers".into(),
                    message: "must be a table of named providers".into(),
                }),
            }
        }
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        let provider_names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();

        let mut policies = Vec::new();
        let mut policy_names = BTreeSet::new();
        if let Some(p) = root.get("policies") {
            match p.as_dict() {
                Some(map) => {
                    for (name, v) in map {
                        policy_names.insert(name.clone());
                        let section = format!("policies.{name}");
                        if let Some(raw) = self.section::<RawPolicy>(&section, v)
                            && let Some(p) = self.policy(
                                name,
                                &section,
                                raw,
                                &declared_providers,
                                &provider_names,
                            )
                        {
                            policies.push(p);
                        }
                    }
                }
                None => self.err(ConfigError::Invalid {
                    section: "policies".into(),
                    message: "must be a table of named policies".into(),
                }),
            }
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.shared_callbacks(&policies);
        for p in &policies {
            self.audiences(p, &providers);
        }

        let mut routes = Vec::new();
        if let Some(r) = root.get("routes") {
            match r.as_array() {
                Some(list) => {
                    for (i, v) in list.iter().enumerate() {
                        let section = format!("routes[{i}]");
                        if let Some(raw) = self.section::<RawRoute>(&section, v)
                            && let Some(route) = self.route(&section, raw, &policy_names, &policies)
                        {
                            routes.push(route);
                        }
                    }
                }
                None => self.err(ConfigError::Invalid {
                    section: "routes".into(),
                    message: "must be an array of tables ([[routes]])".into(),
                }),
            }
        }

        if !self.errors.is_empty() {
            return None;
        }
        Some(Config {
            server: server?,
            providers: providers.into(),
            policies: policies.into(),
            routes: RouteTable::new(routes),
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let mut addr = |field: &'static str, v: Option<String>, default: &str| {
            let v = v.unwrap_or_else(|| default.to_string());
            match v.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.errors.push(ConfigError::BadAddr { field, value: v });
                    None
                }
            }
        };
        let grpc_addr = addr("grpc_addr", raw.grpc_addr, "127.0.0.1:9191");
        let admin_addr = addr("admin_addr", raw.admin_addr, "127.0.0.1:9192");
        let log_format = match raw.log_format.as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                self.err(ConfigError::Invalid {
                    section: "server".into(),
                    message: format!("log_format must be \"json\" or \"pretty\", not {other:?}"),
                });
                LogFormat::Json
            }
        };
        Some(ServerConfig {
            grpc_addr: grpc_addr?,
            admin_addr: admin_addr?,
            log_format,
            token_cache_entries: raw.token_cache_entries.unwrap_or(100_000),
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_secs.unwrap_or(10)),
            check_timeout: Duration::from_millis(raw.check_timeout_ms.unwrap_or(900).max(1)),
        })
    }

    fn url(&mut self, section: &str, field: &'static str, v: Option<String>) -> Option<Url> {
        let v = v?;
        match Url::parse(&v) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(_) => {
                self.err(ConfigError::BadUrl {
                    section: section.into(),
                    field,
                    reason: "scheme must be http or https, with a host".into(),
                });
                None
            }
            Err(e) => {
                self.err(ConfigError::BadUrl {
                    section: section.into(),
                    field,
                    reason: e.to_string(),
                });
                None
            }
        }
    }

    fn provider(&mut self, name: &str, section: &str, raw: RawProvider) -> Option<ProviderConfig> {
        let before = self.errors.len();
        let issuer = match raw.issuer {
            Some(i) => {
                if let Some(u) = self.url(section, "issuer", Some(i.clone())) {
                    self.warn_plain_http(section, "issuer", &u);
                }
                Some(i)
            }
            None => {
                self.err(ConfigError::Missing {
                    section: section.into(),
                    field: "issuer",
                });
                None
            }
        };
        let client_secret = match (raw.client_secret, raw.client_secret_file) {
            (Some(_), Some(_)) => {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: "give client_secret or client_secret_file, not both".into(),
                });
                None
            }
            (Some(s), None) => Some(s),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(s) => Some(Secret::new(s.trim_end_matches(['\r', '\n']))),
                Err(e) => {
                    self.err(ConfigError::SecretFile {
                        section: section.into(),
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    });
                    None
                }
            },
            (None, None) => None,
        };
        let jwks_uri = self.url(section, "jwks_uri", raw.jwks_uri);
        let token_endpoint = self.url(section, "token_endpoint", raw.token_endpoint);
        let introspection_endpoint = self.url(
            section,
            "introspection_endpoint",
            raw.introspection_endpoint,
        );
        let authorization_endpoint = self.url(
            section,
            "authorization_endpoint",
            raw.authorization_endpoint,
        );
        let end_session_endpoint =
            self.url(section, "end_session_endpoint", raw.end_session_endpoint);
        let token_endpoint_auth_method = match raw.token_endpoint_auth_method.as_deref() {
            None => None,
            Some("client_secret_basic") => Some(TokenEndpointAuth::ClientSecretBasic),
            Some("client_secret_post") => Some(TokenEndpointAuth::ClientSecretPost),
            Some(other) => {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!(
                        "token_endpoint_auth_method must be client_secret_basic or client_secret_post, not {other:?}"
                    ),
                });
                None
            }
        };
        let http_timeout_ms = raw.http_timeout_ms.unwrap_or(2000);
        if http_timeout_ms == 0 {
            self.err(ConfigError::Conflict {
                section: section.into(),
                message: "http_timeout_ms must be greater than 0".into(),
            });
        }
        let client_lockout_secs = raw.client_lockout_secs.unwrap_or(60);
        let client_credentials_rate = raw.client_credentials_rate.unwrap_or(10);
        let client_credentials_burst = raw.client_credentials_burst.unwrap_or(20);
        for (key, value) in [
            ("client_lockout_secs", client_lockout_secs),
            (
                "client_credentials_rate",
                u64::from(client_credentials_rate),
            ),
            (
                "client_credentials_burst",
                u64::from(client_credentials_burst),
            ),
        ] {
            if value == 0 {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: format!("{key} must be at least 1"),
                });
            }
        }
        // durations that become deadlines (`now + d`) and cache lifetimes: a day is far beyond any sane value, and
        // keeps the arithmetic from overflowing (a panic in a Check would hand the answer to Envoy's failure mode)
        for (key, value) in [
            ("client_lockout_secs", Some(client_lockout_secs)),
            ("jwks_min_refetch_secs", raw.jwks_min_refetch_secs),
            ("jwks_refresh_secs", raw.jwks_refresh_secs),
            ("leeway_secs", raw.leeway_secs),
            ("http_timeout_ms", raw.http_timeout_ms.map(|ms| ms / 1000)),
        ] {
            self.at_most_a_day(section, key, value);
        }
        if self.errors.len() != before {
            return None;
        }
        Some(ProviderConfig {
            name: name.to_string(),
            issuer: issuer?,
            client_id: raw.client_id,
            client_secret,
            audiences: raw.audiences,
            jwks_uri,
            token_endpoint,
            introspection_endpoint,
            authorization_endpoint,
            end_session_endpoint,
            leeway_secs: raw.leeway_secs.unwrap_or(30),
            http_timeout: Duration::from_millis(http_timeout_ms),
            jwks_refresh: Duration::from_secs(raw.jwks_refresh_secs.unwrap_or(300).max(1)),
            jwks_min_refetch: Duration::from_secs(raw.jwks_min_refetch_secs.unwrap_or(5)),
            token_endpoint_auth_method,
            client_lockout_threshold: raw.client_lockout_threshold.unwrap_or(5),
            client_lockout: Duration::from_secs(client_lockout_secs),
            client_credentials_rate,
            client_credentials_burst,
        })
    }

    /// A policy taking tokens (`bearer`, `introspection`) needs a provider with `audiences`, or says
    /// `allow_any_audience = true`; saying it while the provider has audiences (which are still checked) is a
    /// contradiction.
    fn audiences(&mut self, p: &Policy, providers: &[ProviderConfig]) {
        let Some(provider) = providers.get(p.provider) else {
            return;
        };
        let section = format!("policies.{}", p.name);
        let takes_tokens = p.allows(AuthMethod::Bearer) || p.allows(AuthMethod::Introspection);
        if takes_tokens && provider.audiences.is_empty() && !p.allow_any_audience {
            self.err(ConfigError::NoAudiences {
                section,
                provider: provider.name.clone(),
            });
        } else if p.allow_any_audience && !provider.audiences.is_empty() {
            self.err(ConfigError::Conflict {
                section,
                message: format!(
                    "allow_any_audience = true, but provider `{}` lists `audiences`, which are checked for every policy: remove one of the two",
                    provider.name
                ),
            });
        }
    }

    fn requirement(
        &mut self,
        section: &str,
        field: &str,
        claim: Option<Vec<String>>,
        default_claim: &str,
        required: Vec<String>,
    ) -> Option<Requirement> {
        let claim = claim.unwrap_or_else(|| vec![default_claim.to_string()]);
        if claim.is_empty() || claim.iter().any(|k| k.is_empty()) {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!("{field}_claim must be a non-empty list of non-empty keys"),
            });
            return None;
        }
        if required
            .iter()
            .any(|r| r.split_whitespace().next().is_none())
        {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!("{field}_required has an empty entry (it would match everything)"),
            });
            return None;
        }
        if required.is_empty() {
            return None;
        }
        Some(Requirement::new(field, claim, &required))
    }

    fn policy(
        &mut self,
        name: &str,
        section: &str,
        raw: RawPolicy,
        declared: &BTreeSet<String>,
        providers: &[String],
    ) -> Option<Policy> {
        let before = self.errors.len();
        let provider = match &raw.provider {
            None => {
                self.err(ConfigError::Missing {
                    section: section.into(),
                    field: "provider",
                });
                None
            }
            Some(p) if !declared.contains(p) => {
                self.err(ConfigError::UnknownProvider {
                    section: section.into(),
                    name: p.clone(),
                });
                None
            }
            // Declared but invalid: its own errors are already listed.
            Some(p) => providers.iter().position(|n| n == p),
        };
        let mut auth_methods = Vec::new();
        for m in &raw.auth_methods {
            match AuthMethod::parse(m) {
                Some(m) if !auth_methods.contains(&m) => auth_methods.push(m),
                Some(_) => {}
                None => self.err(ConfigError::UnknownAuthMethod {
                    section: section.into(),
                    name: m.clone(),
                }),
            }
        }
        if raw.auth_methods.is_empty() {
            self.err(ConfigError::Missing {
                section: section.into(),
                field: "auth_methods",
            });
        }

        let mut reqs = Vec::new();
        reqs.extend(self.requirement(
            section,
            "scopes",
            raw.scopes_claim,
            "scope",
            raw.scopes_required,
        ));
        reqs.extend(self.requirement(
            section,
            "groups",
            raw.groups_claim,
            "groups",
            raw.groups_required,
        ));
        reqs.extend(self.requirement(
            section,
            "roles",
            raw.roles_claim,
            "roles",
            raw.roles_required,
        ));
        reqs.extend(self.requirement(
            section,
            "audience",
            raw.audience_claim,
            "aud",
            raw.audience_required,
        ));

        let mut upstream_headers = Vec::new();
        if raw.upstream_headers_claims.len() != raw.upstream_headers_names.len() {
            self.err(ConfigError::HeaderLengthMismatch {
                section: section.into(),
                claims: raw.upstream_headers_claims.len(),
                names: raw.upstream_headers_names.len(),
            });
        }
        for (claim, hname) in raw
            .upstream_headers_claims
            .iter()
            .zip(&raw.upstream_headers_names)
        {
            // Kong writes the header name as given (e.g. `Issuer_Header`); HTTP/2 and Envoy want lower case.
            match HeaderName::from_bytes(hname.to_ascii_lowercase().as_bytes()) {
                Ok(h) if !hname.starts_with(':') && !is_hop_or_reserved(h.as_str()) => {
                    let path: Vec<String> = claim.split('.').map(str::to_string).collect();
                    if claim.is_empty() || path.iter().any(|p| p.is_empty()) {
                        self.err(ConfigError::Invalid {
                            section: section.into(),
                            message: format!(
                                "upstream_headers_claims entry {claim:?} is not a claim path"
                            ),
                        });
                    } else {
                        upstream_headers.push(UpstreamHeader {
                            claim: path,
                            name: h,
                        });
                    }
                }
                _ => self.err(ConfigError::BadHeaderName {
                    section: section.into(),
                    name: hname.clone(),
                }),
            }
        }

        let redirect_uri = self.url(section, "redirect_uri", raw.redirect_uri);
        if let Some(u) = &redirect_uri {
            if !u.username().is_empty() || u.password().is_some() {
                self.err(ConfigError::BadUrl {
                    section: section.into(),
                    field: "redirect_uri",
                    reason: "must not carry user information (user:password@)".into(),
                });
            }
            if u.fragment().is_some() {
                self.err(ConfigError::BadUrl {
                    section: section.into(),
                    field: "redirect_uri",
                    reason: "must not have a fragment (#...)".into(),
                });
            }
            self.warn_plain_http(section, "redirect_uri", u);
        }
        if let Some(lp) = &raw.logout_path
            && !lp.starts_with('/')
        {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!("logout_path must start with '/', got {lp:?}"),
            });
        }
        let session_secrets = match raw.session_secret {
            None => Vec::new(),
            Some(SecretList::One(s)) => vec![s],
            Some(SecretList::Many(v)) => v,
        };
        let needs_login = auth_methods
            .iter()
            .any(|m| matches!(m, AuthMethod::AuthorizationCode | AuthMethod::Session));
        if needs_login {
            if redirect_uri.is_none() && self.errors.len() == before {
                self.err(ConfigError::Missing {
                    section: section.into(),
                    field: "redirect_uri",
                });
            }
            if session_secrets.is_empty() {
                self.err(ConfigError::Missing {
                    section: section.into(),
                    field: "session_secret",
                });
            }
        }
        for (i, s) in session_secrets.iter().enumerate() {
            use base64::Engine;
            let which = if session_secrets.len() > 1 {
                format!("session_secret[{i}]")
            } else {
                "session_secret".to_string()
            };
            match base64::engine::general_purpose::STANDARD.decode(s.expose().trim()) {
                Ok(bytes) if bytes.len() == 32 => {
                    if let Some(why) = weak_secret(&bytes) {
                        self.err(ConfigError::Invalid {
                            section: section.into(),
                            message: format!(
                                "{which} is not random ({why}): generate one with `openssl rand -base64 32`"
                            ),
                        });
                    } else if is_published_secret(&bytes) {
                        self.warn(format!(
                            "{section}: {which} is published in the oidc-authz repository (an example or test value): anyone can forge sessions; generate your own with `openssl rand -base64 32`"
                        ));
                    }
                }
                _ => self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("{which} must be base64 of exactly 32 random bytes"),
                }),
            }
        }

        let mut client_credential_headers = None;
        for t in &raw.client_credentials_param_type {
            match t.as_str() {
                "header" => {
                    let id = raw.client_arg.as_deref().unwrap_or("client_id");
                    let secret = raw.client_secret_arg.as_deref().unwrap_or("client_secret");
                    let parse = |h: &str| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok();
                    match (parse(id), parse(secret)) {
                        (Some(a), Some(b)) => client_credential_headers = Some((a, b)),
                        _ => self.err(ConfigError::BadHeaderName {
                            section: section.into(),
                            name: format!("{id} / {secret}"),
                        }),
                    }
                }
                // Authorization: Basic is always read.
                "basic" => {}
                other => self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!(
                        "client_credentials_param_type entries must be \"basic\" or \"header\", not {other:?}"
                    ),
                }),
            }
        }
        let post_logout_redirect_uri = self.url(
            section,
            "post_logout_redirect_uri",
            raw.post_logout_redirect_uri,
        );
        let mut claims_source = Vec::new();
        for src in raw
            .session_claims_source
            .unwrap_or_else(|| vec!["access_token".into(), "id_token".into()])
        {
            match src.as_str() {
                "access_token" => claims_source.push(ClaimsSource::AccessToken),
                "id_token" => claims_source.push(ClaimsSource::IdToken),
                other => self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("session_claims_source entries must be access_token or id_token, not {other:?}"),
                }),
            }
        }
        let upstream_id_token_header = match raw.upstream_id_token_header.as_deref() {
            None => None,
            Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.err(ConfigError::BadHeaderName {
                        section: section.into(),
                        name: h.to_string(),
                    });
                    None
                }
            },
        };
        let cookie_name = raw
            .session_cookie_name
            .unwrap_or_else(|| "oidc_authz_session".into());
        if cookie_name.is_empty()
            || !cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!(
                    "session_cookie_name {cookie_name:?} must be letters, digits, '_' or '-'"
                ),
            });
        }
        let mut logout_methods = Vec::new();
        for m in raw
            .logout_methods
            .unwrap_or_else(|| vec!["POST".into(), "DELETE".into()])
        {
            let upper = m.to_ascii_uppercase();
            if matches!(upper.as_str(), "GET" | "POST" | "DELETE") {
                if !logout_methods.contains(&upper) {
                    logout_methods.push(upper);
                }
            } else {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!(
                        "logout_methods entries must be GET, POST or DELETE, not {m:?}"
                    ),
                });
            }
        }
        if logout_methods.is_empty() {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: "logout_methods must name at least one method".into(),
            });
        }
        let login = match (&redirect_uri, needs_login) {
            (Some(uri), true) => Some(LoginSettings {
                redirect_uri: uri.clone(),
                cookie_name,
                idle_timeout: raw.session_idle_timeout_secs.unwrap_or(900).max(1),
                absolute_timeout: raw.session_absolute_timeout_secs.unwrap_or(86_400).max(1),
                refresh_leeway: raw.refresh_leeway_secs.unwrap_or(30),
                post_logout_redirect_uri,
                claims_source,
                upstream_access_token: raw.upstream_access_token.unwrap_or(true),
                upstream_id_token_header,
                logout_methods,
                logout_revoke: raw.logout_revoke.unwrap_or(true),
            }),
            _ => None,
        };
        for (key, value) in [
            ("cache_introspection_secs", raw.cache_introspection_secs),
            ("cache_ttl_neg_secs", raw.cache_ttl_neg_secs),
            ("refresh_leeway_secs", raw.refresh_leeway_secs),
        ] {
            self.at_most_a_day(section, key, value);
        }
        let mut controlled_headers: Vec<HeaderName> =
            upstream_headers.iter().map(|h| h.name.clone()).collect();
        for (what, h) in upstream_headers
            .iter()
            .map(|h| ("upstream_headers_names", &h.name))
            .chain(
                login
                    .as_ref()
                    .and_then(|l| l.upstream_id_token_header.as_ref())
                    .map(|h| ("upstream_id_token_header", h)),
            )
        {
            if h.as_str().contains('_') {
                self.warn(format!(
                    "{section}: {what} entry `{h}` has '_': many upstreams (nginx, CGI/WSGI servers) drop or rename such headers; prefer '-'"
                ));
            }
        }
        if let Some((id_h, secret_h)) = &client_credential_headers {
            for h in [id_h, secret_h] {
                if h.as_str().contains('_') {
                    self.warn(format!(
                        "{section}: client credential header `{h}` has '_': Envoy configured as shipped (headers_with_underscores_action: REJECT_REQUEST) answers 400 to requests carrying it; set client_arg / client_secret_arg to names with '-'"
                    ));
                }
                controlled_headers.push(h.clone());
            }
        }
        let sends_authorization = auth_methods.contains(&AuthMethod::ClientCredentials)
            || login.as_ref().is_some_and(|l| l.upstream_access_token);
        if sends_authorization {
            controlled_headers.push(http::header::AUTHORIZATION);
        }
        if let Some(h) = login
            .as_ref()
            .and_then(|l| l.upstream_id_token_header.clone())
        {
            controlled_headers.push(h);
        }
        controlled_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        controlled_headers.dedup();
        if self.errors.len() != before {
            return None;
        }
        Some(Policy {
            name: name.to_string(),
            provider: provider?,
            auth_methods,
            access: AccessRules::new(reqs),
            upstream_headers,
            introspect_jwt_tokens: raw.introspect_jwt_tokens,
            allow_any_audience: raw.allow_any_audience,
            cache_introspection_secs: raw.cache_introspection_secs.unwrap_or(300),
            cache_ttl_neg_secs: raw.cache_ttl_neg_secs.unwrap_or(10),
            scopes: raw.scopes,
            redirect_uri,
            logout_path: raw.logout_path,
            session_secrets,
            client_credential_headers,
            login,
            controlled_headers,
        })
    }

    /// A duration setting in seconds must not exceed a day.
    fn at_most_a_day(&mut self, section: &str, key: &str, secs: Option<u64>) {
        if secs.is_some_and(|v| v > 86_400) {
            self.err(ConfigError::Conflict {
                section: section.into(),
                message: format!("{key} must be at most a day (86400 s)"),
            });
        }
    }

    /// Warns about plain `http://` on a host that is not loopback (tokens and codes in clear on the network).
    fn warn_plain_http(&mut self, section: &str, field: &str, u: &Url) {
        if u.scheme() != "http" {
            return;
        }
        let loopback = match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if !loopback {
            self.warn(format!(
                "{section}: {field} uses plain http:// on a host that is not loopback: tokens, codes and cookies cross the network in clear"
            ));
        }
    }

    /// Two login policies that answer the same callback (origin and path) must be interchangeable there: the
    /// login cookie (one name for all policies) is sealed by the policy that starts the login and opened by the one
    /// Envoy routes the callback to, which then sets its own session cookie. So they need the same provider, the
    /// same session cookie name, and each must open what the other seals (its first secret in the other's list);
    /// otherwise the callback refuses every login through one of them, or sets a cookie the other never reads.
    fn shared_callbacks(&mut self, policies: &[Policy]) {
        for (i, a) in policies.iter().enumerate() {
            let Some(la) = &a.login else { continue };
            for b in &policies[i + 1..] {
                let Some(lb) = &b.login else { continue };
                let same_callback = la.redirect_uri.origin() == lb.redirect_uri.origin()
                    && la.redirect_uri.path() == lb.redirect_uri.path();
                if !same_callback {
                    continue;
                }
                let opens = |x: &Policy, y: &Policy| {
                    y.session_secrets
                        .first()
                        .is_some_and(|k| x.session_secrets.contains(k))
                };
                let why = if a.provider != b.provider {
                    Some("a different provider")
                } else if la.cookie_name != lb.cookie_name {
                    Some("a different session_cookie_name")
                } else if !(opens(a, b) && opens(b, a)) {
                    Some("session secrets that cannot open each other's cookies")
                } else {
                    None
                };
                if let Some(why) = why {
                    self.err(ConfigError::Conflict {
                        section: format!("policies.{}", b.name),
                        message: format!(
                            "shares its callback {} with policies.{} but has {why}: logins through one would fail at the other's callback; give policies that share a callback the same provider, session cookie and session_secret list (or their own redirect_uri)",
                            lb.redirect_uri.path(),
                            a.name
                        ),
                    });
                }
            }
        }
    }

    fn route(
        &mut self,
        section: &str,
        raw: RawRoute,
        policy_names: &BTreeSet<String>,
        policies: &[Policy],
    ) -> Option<Route> {
        let before = self.errors.len();
        let given = [
            raw.path_prefix.is_some(),
            raw.path_exact.is_some(),
            raw.path_regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given > 1 {
            self.err(ConfigError::Conflict {
                section: section.into(),
                message: "give at most one of path_prefix, path_exact, path_regex".into(),
            });
        }
        let path = if let Some(p) = raw.path_exact {
            if !p.starts_with('/') {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("path_exact must start with '/', got {p:?}"),
                });
            }
            PathMatch::Exact(p)
        } else if let Some(r) = raw.path_regex {
            match regex::Regex::new(&format!("^(?:{r})$")) {
                Ok(re) => PathMatch::Regex(re),
                Err(e) => {
                    self.err(ConfigError::BadRegex {
                        section: section.into(),
                        reason: e.to_string(),
                    });
                    PathMatch::Prefix("/".into())
                }
            }
        } else {
            let p = raw.path_prefix.unwrap_or_else(|| "/".into());
            if !p.starts_with('/') {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("path_prefix must start with '/', got {p:?}"),
                });
            }
            PathMatch::prefix(&p)
        };
        let mut hosts = Vec::new();
        for h in &raw.hosts {
            match HostMatch::parse(h) {
                Some(m) => hosts.push(m),
                None => self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("{h:?} is not a host name or *.suffix wildcard"),
                }),
            }
        }
        let mut methods = Vec::new();
        for m in &raw.methods {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("{m:?} is not an HTTP method"),
                }),
            }
        }
        let policy = match raw.policy {
            None => {
                self.err(ConfigError::Missing {
                    section: section.into(),
                    field: "policy",
                });
                None
            }
            Some(p) if !policy_names.contains(&p) => {
                self.err(ConfigError::UnknownPolicy {
                    section: section.into(),
                    name: p,
                });
                None
            }
            Some(p) => Some(p),
        };
        if self.errors.len() != before {
            return None;
        }
        // Policies are already validated and sorted; a policy that failed validation has its own error.
        let policy_name = policy?;
        let policy = policies.iter().position(|p| p.name == policy_name)?;
        Some(Route {
            hosts,
            path,
            methods,
            policy,
            policy_name,
        })
    }
}

/// Headers that must never be set from a claim.
/// The config overrides among environment variables: `OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET=x` sets
/// `providers.okta.client_secret`. Only variables naming a config section and a key below it are overrides (not
/// `OIDC_AUTHZ_CONFIG`, nor a script's `OIDC_AUTHZ_BIN`). Values read as TOML-like scalars (`true`, `42`,
/// `[1, 2]`), except secrets: a secret is a string, verbatim (`0123` stays `0123`; `987654321` is not a number
/// to refuse, and so never echoed in an error).
fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .and_then(|_| name.get(ENV_PREFIX.len()..))
        else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let known = matches!(
            parts[0].as_str(),
            "server" | "providers" | "policies" | "routes"
        );
        if !known || parts.len() < 2 || parts.iter().any(String::is_empty) {
            continue;
        }
        let key = parts.join(".");
        let value = if is_secret_key(&key) {
            Value::from(value)
        } else {
            value
                .parse::<Value>()
                .unwrap_or_else(|never| match never {})
        };
        out.push((key, value));
    }
    out
}

/// Whether a config key (its last dotted segment) holds a secret: never parsed as a number, never echoed.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(
        last.to_ascii_lowercase().as_str(),
        "client_secret" | "session_secret" | "secret" | "client_jwk"
    )
}

/// A load error without the source lines a TOML parser quotes (`3 | client_secret = "...`): the line may hold a
/// secret. Keeps the position ("at line 3, column 17") and the reason.
fn without_source_lines(msg: &str) -> String {
    msg.lines()
        .filter(|l| {
            let t = l.trim_start();
            let t = t
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !t.starts_with('|')
        })
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why 32 decoded secret bytes are not random, if they are not: too few distinct byte values (zeros, repeated
/// patterns), or all printable ASCII (a password or phrase in base64, not random bytes). 32 random bytes have
/// about 30 distinct values, and are all printable with a chance of about 1e-14.
fn weak_secret(bytes: &[u8]) -> Option<&'static str> {
    let mut seen = [false; 256];
    for b in bytes {
        seen[usize::from(*b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < 16 {
        Some("too few distinct bytes")
    } else if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        Some("it decodes to text: a passphrase, not random bytes")
    } else {
        None
    }
}

/// SHA-256 (hex) of the session secrets that appear in this repository's examples, demo and tests: published, so
/// anyone can seal a session with them. `check-config` warns when a configuration uses one. A test keeps the list
/// complete (`published_secrets_are_all_listed`).
const PUBLISHED_SECRETS: &[&str] = &[
    "3c8dbef1b111f5fec3d34f815a2885200484bfe3e5bb3f56e0021c41e0b16f16",
    "4ea50fb41e5ff59a44d05c554489761248f0361c55a2b430068a62e20802754b",
    "4c962ec5d1b8322bf45eda002a940c0a9c1f71f1d9135c0ca2baa76a5dd41ec3",
    "3aa8db4bb651750ee7fb50331e448da7f1cc5ccefd1f64ebe98e398bdfa7e312",
    "25335df24f58912c6068465893f703a6eb0a97b582161943812e4f1cfb45af20",
];

fn is_published_secret(bytes: &[u8]) -> bool {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    PUBLISHED_SECRETS.contains(&hex.as_str())
}

fn is_hop_or_reserved(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "keep-alive"
    )
}

/// Collects the validated config's policy names (for tests).
pub fn policy_names(cfg: &Config) -> BTreeMap<String, usize> {
    cfg.policies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
grpc_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"

[providers.okta]
issuer = "https://dev-123.okta.com/oauth2/default"
client_id = "0oa1"
client_secret = "very-secret-value"
audiences = ["api://default"]

[policies.api]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["iss", "sub"]
upstream_headers_names  = ["X-Issuer", "x-user"]

[[routes]]
path_prefix = "/api"
policy = "api"
"#;

    #[test]
    fn good_config_loads() {
        let cfg = Config::from_toml(GOOD).unwrap();
        assert_eq!(cfg.providers.len(), 1);
        assert_eq!(
            cfg.policies[0].upstream_headers[0].name.as_str(),
            "x-issuer"
        );
        assert_eq!(cfg.providers[0].leeway_secs, 30);
    }

    #[test]
    fn token_policies_need_audiences_or_allow_any_audience() {
        let no_aud = GOOD.replace("audiences = [\"api://default\"]\n", "");
        let err = Config::from_toml(&no_aud).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].kind(), "no_audiences");
        assert!(err.to_string().contains("policies.api"), "{err}");
        for method in ["introspection", "bearer"] {
            let t = no_aud.replace(
                "auth_methods = [\"bearer\"]",
                &format!("auth_methods = [\"{method}\"]"),
            );
            assert_eq!(
                Config::from_toml(&t).unwrap_err().0[0].kind(),
                "no_audiences"
            );
        }
        let any = no_aud.replace(
            "auth_methods = [\"bearer\"]",
            "auth_methods = [\"bearer\"]\nallow_any_audience = true",
        );
        assert!(Config::from_toml(&any).unwrap().policies[0].allow_any_audience);
        // client credentials alone verify only tokens this service obtained itself: no audiences needed
        let cc = no_aud.replace(
            "auth_methods = [\"bearer\"]",
            "auth_methods = [\"client_credentials\"]",
        );
        assert!(Config::from_toml(&cc).is_ok());
        // allow_any_audience next to audiences (which would still be checked) is a contradiction
        let both = GOOD.replace(
            "auth_methods = [\"bearer\"]",
            "auth_methods = [\"bearer\"]\nallow_any_audience = true",
        );
        assert_eq!(
            Config::from_toml(&both).unwrap_err().0[0].kind(),
            "conflict"
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let cfg = Config::from_toml(GOOD).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("very-secret-value"), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn client_credentials_limits() {
        let cfg = Config::from_toml(GOOD).unwrap();
        let p = &cfg.providers[0];
        assert_eq!(p.client_lockout_threshold, 5);
        assert_eq!(p.client_lockout, Duration::from_secs(60));
        assert_eq!(
            (p.client_credentials_rate, p.client_credentials_burst),
            (10, 20)
        );
        let set = GOOD.replace(
            "audiences = [\"api://default\"]",
            "audiences = [\"api://default\"]\nclient_lockout_threshold = 0\nclient_lockout_secs = 300\nclient_credentials_rate = 2\nclient_credentials_burst = 4",
        );
        let cfg = Config::from_toml(&set).unwrap();
        let p = &cfg.providers[0];
        assert_eq!(p.client_lockout_threshold, 0, "0 turns the lock-out off");
        assert_eq!(p.client_lockout, Duration::from_secs(300));
        assert_eq!(
            (p.client_credentials_rate, p.client_credentials_burst),
            (2, 4)
        );
        let zero = GOOD.replace(
            "audiences = [\"api://default\"]",
            "audiences = [\"api://default\"]\nclient_lockout_secs = 0\nclient_credentials_rate = 0\nclient_credentials_burst = 0",
        );
        let err = Config::from_toml(&zero).unwrap_err().to_string();
        for key in [
            "client_lockout_secs",
            "client_credentials_rate",
            "client_credentials_burst",
        ] {
            assert!(
                err.contains(&format!("providers.okta: {key} must be at least 1")),
                "{err}"
            );
        }
    }

    #[test]
    fn collects_every_error() {
        let bad = r#"
[server]
grpc_addr = "nope"
bogus = 1
[providers.okta]
issuer = "not a url"
wat = true
[policies.api]
provider = "nobody"
auth_methods = ["bearer", "magic"]
upstream_headers_claims = ["iss", "sub"]
upstream_headers_names = ["x-issuer"]
[policies.two]
provider = "okta"
auth_methods = ["bearer"]
upstream_headers_claims = ["iss"]
upstream_headers_names = ["bad header"]
[[routes]]
path_regex = "("
policy = "ghost"
"#;
        let err = Config::from_toml(bad).unwrap_err();
        let kinds: BTreeSet<&str> = err.0.iter().map(|e| e.kind()).collect();
        for k in [
            "bad_addr",
            "unknown_key",
            "bad_url",
            "unknown_provider",
            "unknown_auth_method",
            "header_length_mismatch",
            "bad_header_name",
            "bad_regex",
            "unknown_policy",
        ] {
            assert!(kinds.contains(k), "missing {k} in {err}");
        }
        let text = err.to_string();
        assert!(
            text.contains("server.bogus") && text.contains("providers.okta.wat"),
            "{text}"
        );
    }
    /// Every 32-byte base64 secret written in this repository (examples, demo, tests, docs) is in
    /// `PUBLISHED_SECRETS`, so `check-config` warns whoever copies one; and none of them is weak.
    #[test]
    fn published_secrets_are_all_listed() {
        use base64::Engine;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut stack = vec![root.to_path_buf()];
        let mut found = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if path.is_dir() {
                    // tests/data/invalid holds deliberately bad values
                    if !matches!(name.as_str(), "target" | "node_modules" | ".git" | ".venv")
                        && !path.ends_with("tests/data/invalid")
                    {
                        stack.push(path);
                    }
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                for line in text
                    .lines()
                    .filter(|l| l.to_ascii_lowercase().contains("secret"))
                {
                    let b = line.as_bytes();
                    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
                    for start in 0..b.len().saturating_sub(43) {
                        let run = &b[start..start + 43];
                        let bounded = (start == 0 || !is_b64(b[start - 1]))
                            && b.get(start + 43) == Some(&b'=')
                            && b.get(start + 44).is_none_or(|c| !is_b64(*c) && *c != b'=');
                        if !bounded || !run.iter().all(|c| is_b64(*c)) {
                            continue;
                        }
                        let value = &line[start..start + 44];
                        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value)
                        else {
                            continue;
                        };
                        found += 1;
                        assert!(
                            is_published_secret(&bytes),
                            "{}: a secret not in PUBLISHED_SECRETS: {value}",
                            path.display()
                        );
                        assert_eq!(weak_secret(&bytes), None, "{}: {value}", path.display());
                    }
                }
            }
        }
        assert!(found >= 5, "the scan found only {found} secrets");
    }

    #[test]
    fn weak_secrets() {
        assert!(weak_secret(&[0u8; 32]).is_some());
        assert!(weak_secret(&[b'a'; 32]).is_some());
        assert!(weak_secret(b"my-very-own-session-passphrase!!").is_some());
        let pattern: Vec<u8> = (0..32u8).map(|i| i % 8).collect();
        assert!(weak_secret(&pattern).is_some());
        let random: Vec<u8> = (0..32u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(weak_secret(&random), None, "{random:?}");
    }
}
