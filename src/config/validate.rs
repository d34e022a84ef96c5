//! The rules from the raw serde shapes to the validated model: every value checked, names cross-referenced,
//! regexes compiled and cookie codecs keyed once, and every problem collected with its key path.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use figment::value::Value;
use http::HeaderName;
use serde::de::DeserializeOwned;
use url::Url;

use super::model::{
    AuthMethod, ClaimsSource, Config, LogFormat, LoginSettings, Policy, ProviderConfig, Secret,
    ServerConfig, SessionStorage, StoreBackendConfig, StoreConfig, TokenEndpointAuth,
    UpstreamHeader,
};
use super::model::{ErrorAnswers, TokenHeader};
use super::raw::ClaimName;
use super::raw::{
    JwkText, RawPolicy, RawProvider, RawRoute, RawServer, RawStore, SecretList, UrlList,
};
use super::{ConfigError, is_secret_key};
use crate::credentials::token_places::TokenPlaces;
use crate::login::cookie::CookieCodec;
use crate::policy::access::ConsumerRule;
use crate::policy::access::{AccessRules, Requirement};
use crate::policy::routes::{HostMatch, PathMatch, Route, RouteTable};
use crate::provider::assertion::{self, ClientKey};

/// Validates a whole configuration: the typed [`Config`], or every problem found.
pub(super) fn config(value: &Value) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator::default();
    match v.config(value) {
        Some(cfg) if v.errors.is_empty() => Ok(cfg),
        _ => Err(v.errors),
    }
}

/// The longest provider or policy name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Why a provider or policy name (a table key) is refused, if it is: names go into the generated Envoy config, its
/// YAML comments and the logs, so none may be empty, overlong, or hold a control character or a Unicode line or
/// paragraph separator (a quoted TOML key can hold a newline, which would end a YAML comment).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.chars().count() > MAX_NAME_CHARS {
        Some("is longer than 128 characters")
    } else if name.chars().any(crate::envoy_config::unsafe_in_yaml) {
        Some("holds a control character or a line separator")
    } else {
        None
    }
}

/// Collects errors and warnings while it builds the model.
#[derive(Default)]
struct Validator {
    /// Every problem found so far, in the order found.
    errors: Vec<ConfigError>,
    /// Things allowed but probably wrong, for [`Config::warnings`].
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

    /// The whole configuration: each top-level section, then the checks across them.
    fn config(&mut self, value: &Value) -> Option<Config> {
        let Some(root) = value.as_dict() else {
            self.err(ConfigError::Load("the configuration is not a table".into()));
            return None;
        };
        for key in root.keys() {
            if !matches!(
                key.as_str(),
                "server" | "store" | "providers" | "policies" | "routes"
            ) {
                self.err(ConfigError::UnknownKey(key.clone()));
            }
        }
        let server = match root.get("server") {
            Some(v) => self.section::<RawServer>("server", v),
            None => Some(RawServer::default()),
        };
        let server = server.and_then(|s| self.server(s));
        let store = match root.get("store") {
            Some(v) => self.section::<RawStore>("store", v),
            None => Some(RawStore::default()),
        };
        let store = store.and_then(|s| self.store(s));
        let (providers, declared_providers) = self.providers(root.get("providers"));
        let (policies, policy_names) =
            self.policies(root.get("policies"), &declared_providers, &providers);
        let routes = self.routes(root.get("routes"), &policy_names, &policies);
        if !self.errors.is_empty() {
            return None;
        }
        Some(Config {
            server: server?,
            store: store?,
            providers: providers.into(),
            policies: policies.into(),
            routes: RouteTable::new(routes),
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// The entries of a table of named sections (`[providers.NAME]`) with their key paths; an error when it is not
    /// a table.
    fn named<'v>(
        &mut self,
        key: &str,
        value: Option<&'v Value>,
    ) -> Vec<(&'v String, String, &'v Value)> {
        let Some(value) = value else {
            return Vec::new();
        };
        match value.as_dict() {
            Some(map) => map
                .iter()
                .map(|(name, v)| match name_problem(name) {
                    None => (name, format!("{key}.{name}"), v),
                    Some(why) => {
                        // The key path of its other errors shows the name escaped, never raw.
                        let shown = format!("{key}.{name:?}");
                        self.err(ConfigError::Invalid {
                            section: key.into(),
                            message: format!("the name {name:?} {why}"),
                        });
                        (name, shown, v)
                    }
                })
                .collect(),
            None => {
                self.err(ConfigError::Invalid {
                    section: key.into(),
                    message: format!("must be a table of named {key}"),
                });
                Vec::new()
            }
        }
    }

    /// `[providers.*]`: the valid ones sorted by name, and every declared name (valid or not).
    fn providers(&mut self, value: Option<&Value>) -> (Vec<ProviderConfig>, BTreeSet<String>) {
        let mut providers = Vec::new();
        let mut declared = BTreeSet::new();
        for (name, section, v) in self.named("providers", value) {
            declared.insert(name.clone());
            if let Some(raw) = self.section::<RawProvider>(&section, v)
                && let Some(p) = self.provider(name, &section, raw)
            {
                providers.push(p);
            }
        }
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        (providers, declared)
    }

    /// `[policies.*]`: the valid ones sorted by name (checked against each other and their providers), and every
    /// declared name.
    fn policies(
        &mut self,
        value: Option<&Value>,
        declared_providers: &BTreeSet<String>,
        providers: &[ProviderConfig],
    ) -> (Vec<Policy>, BTreeSet<String>) {
        let provider_names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();
        let mut policies = Vec::new();
        let mut declared = BTreeSet::new();
        for (name, section, v) in self.named("policies", value) {
            declared.insert(name.clone());
            if let Some(raw) = self.section::<RawPolicy>(&section, v)
                && let Some(p) =
                    self.policy(name, &section, raw, declared_providers, &provider_names)
            {
                policies.push(p);
            }
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.shared_callbacks(&policies);
        for p in &policies {
            self.audiences(p, providers);
            self.distinct_issuers(p, providers);
        }
        (policies, declared)
    }

    /// `[[routes]]`, in config order.
    fn routes(
        &mut self,
        value: Option<&Value>,
        policy_names: &BTreeSet<String>,
        policies: &[Policy],
    ) -> Vec<Route> {
        let mut routes = Vec::new();
        let Some(value) = value else {
            return routes;
        };
        match value.as_array() {
            Some(list) => {
                for (i, v) in list.iter().enumerate() {
                    let section = format!("routes[{i}]");
                    if let Some(raw) = self.section::<RawRoute>(&section, v)
                        && let Some(route) = self.route(&section, raw, policy_names, policies)
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
        routes
    }

    /// `[server]`, with its defaults.
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

    /// `[store]`: memory (the default) or Redis (one node, or a cluster); with Redis, `secret` (or `secret_file`)
    /// seals every value at rest.
    fn store(&mut self, raw: RawStore) -> Option<StoreConfig> {
        let section = "store";
        let defaults = StoreConfig::default();
        let invalid = |v: &mut Self, message: String| {
            v.err(ConfigError::Invalid {
                section: section.into(),
                message,
            })
        };
        let urls = match raw.url {
            None => Vec::new(),
            Some(UrlList::One(u)) => vec![u],
            Some(UrlList::Many(us)) => us,
        };
        let backend = match raw.backend.as_deref() {
            None | Some("memory") => {
                if !urls.is_empty() || raw.cluster {
                    invalid(
                        self,
                        "`url` and `cluster` need backend = \"redis\" (the memory backend shares nothing)".into(),
                    );
                }
                StoreBackendConfig::Memory
            }
            Some("redis") => {
                if urls.is_empty() {
                    invalid(
                        self,
                        "backend = \"redis\" needs `url` (redis:// or rediss://)".into(),
                    );
                }
                for (i, u) in urls.iter().enumerate() {
                    let ok = Url::parse(u).is_ok_and(|p| {
                        matches!(p.scheme(), "redis" | "rediss") && p.host().is_some()
                    });
                    if !ok {
                        // The URL may carry a password: it is not shown.
                        invalid(
                            self,
                            format!("url[{i}] must be a redis:// or rediss:// URL with a host"),
                        );
                    }
                }
                if urls.len() > 1 && !raw.cluster {
                    invalid(
                        self,
                        "several URLs are the nodes of a Redis Cluster: add cluster = true".into(),
                    );
                }
                StoreBackendConfig::Redis {
                    nodes: urls,
                    cluster: raw.cluster,
                }
            }
            Some(other) => {
                invalid(
                    self,
                    format!("backend must be \"memory\" or \"redis\", not {other:?}"),
                );
                StoreBackendConfig::Memory
            }
        };
        let secret = match (raw.secret, raw.secret_file) {
            (Some(_), Some(_)) => {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: "give secret or secret_file, not both".into(),
                });
                None
            }
            (Some(s), None) => Some(s),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(s) => Some(Secret::new(s.trim_end_matches(['\r', '\n']))),
                Err(e) => {
                    invalid(
                        self,
                        format!("cannot read secret_file {}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        let codec = match secret {
            Some(s) => self.secret_codec(section, "secret", &[s]),
            None => {
                if matches!(backend, StoreBackendConfig::Redis { .. }) {
                    self.err(ConfigError::Missing {
                        section: section.into(),
                        field: "secret",
                    });
                }
                None
            }
        };
        let key_prefix = raw.key_prefix.unwrap_or(defaults.key_prefix);
        if key_prefix.is_empty()
            || key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            invalid(
                self,
                "key_prefix must be non-empty, without spaces or control characters".into(),
            );
        }
        Some(StoreConfig {
            backend,
            key_prefix,
            codec,
            timeout: raw
                .timeout_ms
                .map_or(defaults.timeout, |ms| Duration::from_millis(ms.max(1))),
        })
    }

    /// An optional http(s) URL with a host.
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

    /// One `[providers.NAME]`, with its defaults.
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
        let userinfo_endpoint =
            self.userinfo_endpoint(section, raw.userinfo_endpoint, issuer.as_deref());
        let (token_endpoint_auth_method, client_key) = self.client_auth(
            section,
            &raw.client_auth,
            &raw.token_endpoint_auth_method,
            raw.client_jwk,
            raw.client_jwk_file,
            raw.client_alg.as_deref(),
        );
        if token_endpoint_auth_method.is_some_and(|m| m != TokenEndpointAuth::PrivateKeyJwt)
            && raw.client_id.is_some()
            && client_secret.is_none()
        {
            self.warn(format!(
                "{section}: client_auth = {:?} but no client_secret: calls with this service's own client fail",
                token_endpoint_auth_method.map_or("", TokenEndpointAuth::as_str)
            ));
        }
        if client_key.is_some() && raw.client_id.is_none() {
            self.err(ConfigError::Conflict {
                section: section.into(),
                message: "client_auth = \"private_key_jwt\" needs client_id (the assertion's iss and sub)".into(),
            });
        }
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
            userinfo_endpoint,
            leeway_secs: raw.leeway_secs.unwrap_or(30),
            http_timeout: Duration::from_millis(http_timeout_ms),
            jwks_refresh: Duration::from_secs(raw.jwks_refresh_secs.unwrap_or(300).max(1)),
            jwks_min_refetch: Duration::from_secs(raw.jwks_min_refetch_secs.unwrap_or(5)),
            token_endpoint_auth_method,
            client_key,
            client_lockout_threshold: raw.client_lockout_threshold.unwrap_or(5),
            client_lockout: Duration::from_secs(client_lockout_secs),
            client_credentials_rate,
            client_credentials_burst,
        })
    }

    /// `client_auth` (Kong's name) or its alias `token_endpoint_auth_method`, and for `private_key_jwt` the private
    /// JWK (`client_jwk` or `client_jwk_file`) with `client_alg`. Every inconsistency is an error; the key is never
    /// quoted.
    fn client_auth(
        &mut self,
        section: &str,
        client_auth: &Option<String>,
        alias: &Option<String>,
        jwk: Option<JwkText>,
        jwk_file: Option<std::path::PathBuf>,
        alg: Option<&str>,
    ) -> (Option<TokenEndpointAuth>, Option<ClientKey>) {
        let names = TokenEndpointAuth::ALL.map(|(_, n)| n).join(", ");
        let mut parse = |key: &str, value: &Option<String>| -> Option<TokenEndpointAuth> {
            let v = value.as_deref()?;
            let m = TokenEndpointAuth::parse(v);
            if m.is_none() {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("{key} must be one of {names}, not {v:?}"),
                });
            }
            m
        };
        let primary = parse("client_auth", client_auth);
        let aliased = parse("token_endpoint_auth_method", alias);
        let method = match (primary, aliased) {
            (Some(a), Some(b)) if a != b => {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: format!(
                        "client_auth = {:?} and token_endpoint_auth_method = {:?} differ (the second is an alias of the first: give one)",
                        a.as_str(),
                        b.as_str()
                    ),
                });
                None
            }
            (a, b) => a.or(b),
        };
        let text = match (jwk, jwk_file) {
            (Some(_), Some(_)) => {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: "give client_jwk or client_jwk_file, not both".into(),
                });
                return (method, None);
            }
            (Some(JwkText::Text(s)), None) => Some(s),
            (Some(JwkText::Table(t)), None) => {
                Some(Secret::new(serde_json::Value::Object(t).to_string()))
            }
            (Some(JwkText::List(l)), None) => {
                Some(Secret::new(serde_json::Value::Array(l).to_string()))
            }
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(s) => Some(Secret::new(s)),
                Err(e) => {
                    self.err(ConfigError::Invalid {
                        section: section.into(),
                        message: format!("cannot read client_jwk_file {}: {e}", path.display()),
                    });
                    return (method, None);
                }
            },
            (None, None) => None,
        };
        let key_alg = match alg {
            None => None,
            Some("HS256") if method == Some(TokenEndpointAuth::ClientSecretJwt) => None,
            Some(a) if method == Some(TokenEndpointAuth::ClientSecretJwt) => {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!(
                        "client_alg {a:?} does not fit client_secret_jwt (HS256, keyed with the client secret)"
                    ),
                });
                None
            }
            Some(a) => match assertion::parse_key_alg(a) {
                Some(alg) => Some(alg),
                None => {
                    self.err(ConfigError::Invalid {
                        section: section.into(),
                        message: format!(
                            "client_alg must be RS256, PS256 or ES256 for private_key_jwt (HS256 for client_secret_jwt), not {a:?}"
                        ),
                    });
                    return (method, None);
                }
            },
        };
        match (method, text) {
            (Some(TokenEndpointAuth::PrivateKeyJwt), None) => {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: "client_auth = \"private_key_jwt\" needs client_jwk or client_jwk_file (a private JWK)".into(),
                });
                (method, None)
            }
            (Some(TokenEndpointAuth::PrivateKeyJwt), Some(text)) => {
                match ClientKey::from_jwk(text.expose(), key_alg) {
                    Ok(key) => {
                        if PUBLISHED_CLIENT_KEYS.contains(&key.fingerprint()) {
                            self.warn(format!(
                                "{section}: client_jwk is a key published in oidc-authz's repository (examples, tests): anyone can sign as this client; generate your own"
                            ));
                        }
                        (method, Some(key))
                    }
                    Err(e) => {
                        self.err(ConfigError::Invalid {
                            section: section.into(),
                            message: e.to_string(),
                        });
                        (method, None)
                    }
                }
            }
            (_, Some(_)) => {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: "client_jwk and client_jwk_file are only used with client_auth = \"private_key_jwt\"".into(),
                });
                (method, None)
            }
            (_, None) => {
                if key_alg.is_some() {
                    self.err(ConfigError::Conflict {
                        section: section.into(),
                        message: "client_alg RS256, PS256 or ES256 is only used with client_auth = \"private_key_jwt\"".into(),
                    });
                }
                (method, None)
            }
        }
    }

    /// A policy taking tokens (`bearer`, `introspection`) needs a provider with `audiences`, or says
    /// `allow_any_audience = true`; saying it while the provider has audiences (which are still checked) is a
    /// contradiction.
    fn audiences(&mut self, p: &Policy, providers: &[ProviderConfig]) {
        // Every listed provider (`providers`): a JWT's `iss` may pick any of them.
        let listed: Vec<&ProviderConfig> = p
            .providers
            .iter()
            .filter_map(|&i| providers.get(i))
            .collect();
        let Some(provider) = listed.first() else {
            return;
        };
        let section = format!("policies.{}", p.name);
        let takes_tokens = p.allows(AuthMethod::Bearer) || p.allows(AuthMethod::Introspection);
        let without: Vec<&str> = listed
            .iter()
            .filter(|c| c.audiences.is_empty())
            .map(|c| c.name.as_str())
            .collect();
        if takes_tokens && !without.is_empty() && !p.allow_any_audience {
            for name in &without {
                self.err(ConfigError::NoAudiences {
                    section: section.clone(),
                    provider: name.to_string(),
                });
            }
        } else if p.allow_any_audience && without.is_empty() {
            let message = if listed.len() == 1 {
                format!(
                    "allow_any_audience = true, but provider `{}` lists `audiences`, which are checked for every policy: remove one of the two",
                    provider.name
                )
            } else {
                "allow_any_audience = true, but every provider in `providers` lists `audiences`, which are checked for every policy: remove allow_any_audience".into()
            };
            self.err(ConfigError::Conflict { section, message });
        } else if p.allow_any_audience && without.len() < listed.len() {
            self.warn(format!(
                "{section}: allow_any_audience = true accepts any audience only from providers without `audiences` ({}); the others' audiences are still checked",
                without.join(", ")
            ));
        }
    }

    /// One claim requirement (`{field}_claim`, `{field}_required`); `None` when nothing is required.
    fn requirement(
        &mut self,
        section: &str,
        field: &str,
        claim: Option<Vec<String>>,
        default_claim: &str,
        required: &[String],
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
        Some(Requirement::new(field, claim, required))
    }

    /// One `[policies.NAME]`, section by section; `None` when any section has an error (each is listed).
    fn policy(
        &mut self,
        name: &str,
        section: &str,
        raw: RawPolicy,
        declared: &BTreeSet<String>,
        providers: &[String],
    ) -> Option<Policy> {
        let before = self.errors.len();
        let provider = self.policy_providers(
            section,
            raw.provider.as_deref(),
            raw.providers.as_deref(),
            declared,
            providers,
        );
        let auth_methods = self.auth_methods(section, &raw.auth_methods);
        let access = self.access_rules(section, &raw);
        let upstream_headers = self.upstream_headers(
            section,
            &raw.upstream_headers_claims,
            &raw.upstream_headers_names,
        );
        let redirect_uri = self.redirect_uri(section, raw.redirect_uri.clone());
        self.logout_path(section, raw.logout_path.as_deref());
        let session_secrets = match &raw.session_secret {
            None => Vec::new(),
            Some(SecretList::One(s)) => vec![s.clone()],
            Some(SecretList::Many(v)) => v.clone(),
        };
        let needs_login = auth_methods
            .iter()
            .any(|m| matches!(m, AuthMethod::AuthorizationCode | AuthMethod::Session));
        if needs_login {
            // An earlier error (a bad redirect_uri among them) says enough.
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
        let codec = self.secret_codec(section, "session_secret", &session_secrets);
        let client_credential_headers = self.client_credential_headers(section, &raw);
        let login = self.login_settings(section, &raw, redirect_uri, codec, needs_login);
        let bearer_token_places =
            self.bearer_token_places(section, &raw, &auth_methods, login.as_ref());
        for (key, value) in [
            ("cache_introspection_secs", raw.cache_introspection_secs),
            ("cache_user_info_secs", raw.cache_user_info_secs),
            ("cache_ttl_neg_secs", raw.cache_ttl_neg_secs),
            ("refresh_leeway_secs", raw.refresh_leeway_secs),
        ] {
            self.at_most_a_day(section, key, value);
        }
        let mut controlled_headers = self.controlled_headers(
            section,
            &upstream_headers,
            login.as_ref(),
            client_credential_headers.as_ref(),
            &auth_methods,
        );
        let upstream_user_info_header = self.upstream_user_info_header(
            section,
            raw.upstream_user_info_header.as_deref(),
            &auth_methods,
            &mut controlled_headers,
        );
        let extra = self.claim_rules_and_headers(
            section,
            &raw,
            &auth_methods,
            &upstream_headers,
            login.as_ref(),
            (
                client_credential_headers.as_ref(),
                upstream_user_info_header.as_ref(),
            ),
        );
        let access = access.with_claim_rules(extra.forbidden, extra.consumer);
        controlled_headers.extend(extra.controlled);
        controlled_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        controlled_headers.dedup();
        if self.errors.len() != before {
            return None;
        }
        let providers = provider?;
        Some(Policy {
            name: name.to_string(),
            provider: *providers.first()?,
            providers,
            auth_methods,
            access,
            upstream_headers,
            introspect_jwt_tokens: raw.introspect_jwt_tokens,
            dynamic_metadata: raw.dynamic_metadata.unwrap_or(true),
            allow_any_audience: raw.allow_any_audience,
            cache_introspection_secs: raw.cache_introspection_secs.unwrap_or(300),
            cache_ttl_neg_secs: raw.cache_ttl_neg_secs.unwrap_or(10),
            scopes: raw.scopes,
            logout_path: raw.logout_path,
            session_secrets,
            client_credential_headers,
            bearer_token_places,
            login,
            controlled_headers,
            upstream_user_info_header,
            cache_user_info_secs: raw
                .cache_user_info_secs
                .or(raw.cache_introspection_secs)
                .unwrap_or(300),
            upstream_access_token_header: extra.token_header,
            upstream_introspection_header: extra.introspection_header,
            upstream_consumer_header: extra.consumer_header,
            error_answers: extra.error_answers,
        })
    }

    /// The policy's providers (`provider = "x"`, or `providers = ["x", "y"]`; exactly one of the two), as indexes
    /// into the valid providers sorted by name, in config order; `None` when any is missing or invalid.
    fn policy_providers(
        &mut self,
        section: &str,
        provider: Option<&str>,
        list: Option<&[String]>,
        declared: &BTreeSet<String>,
        providers: &[String],
    ) -> Option<Vec<usize>> {
        let names = match (provider, list) {
            (Some(_), Some(_)) => {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: "give `provider` or `providers`, not both".into(),
                });
                return None;
            }
            (_, None) => {
                return self
                    .policy_provider(section, provider, declared, providers)
                    .map(|i| vec![i]);
            }
            (None, Some(names)) => names,
        };
        if names.is_empty() {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: "providers must name at least one provider".into(),
            });
            return None;
        }
        let mut out = Vec::with_capacity(names.len());
        let mut valid = true;
        for (i, name) in names.iter().enumerate() {
            let key = format!("{section}.providers[{i}]");
            if names[..i].contains(name) {
                self.err(ConfigError::Invalid {
                    section: key,
                    message: format!("provider `{name}` is listed twice"),
                });
                valid = false;
                continue;
            }
            match self.policy_provider(&key, Some(name), declared, providers) {
                Some(index) => out.push(index),
                None => valid = false,
            }
        }
        valid.then_some(out)
    }

    /// Every provider of a policy with `providers` has its own issuer: a JWT's `iss` must pick exactly one.
    fn distinct_issuers(&mut self, p: &Policy, providers: &[ProviderConfig]) {
        for (i, &a) in p.providers.iter().enumerate() {
            for &b in &p.providers[..i] {
                let (Some(a), Some(b)) = (providers.get(a), providers.get(b)) else {
                    continue;
                };
                if a.issuer == b.issuer {
                    self.err(ConfigError::Conflict {
                        section: format!("policies.{}.providers", p.name),
                        message: format!(
                            "providers `{}` and `{}` have the same issuer {}: a token's `iss` could not pick one",
                            b.name, a.name, a.issuer
                        ),
                    });
                }
            }
        }
    }

    /// The policy's provider, as an index into the valid providers sorted by name.
    fn policy_provider(
        &mut self,
        section: &str,
        provider: Option<&str>,
        declared: &BTreeSet<String>,
        providers: &[String],
    ) -> Option<usize> {
        match provider {
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
                    name: p.to_string(),
                });
                None
            }
            // Declared but invalid: its own errors are already listed.
            Some(p) => providers.iter().position(|n| n == p),
        }
    }

    /// `auth_methods`: known names, duplicates dropped, config order kept; at least one.
    fn auth_methods(&mut self, section: &str, names: &[String]) -> Vec<AuthMethod> {
        let mut auth_methods = Vec::new();
        for m in names {
            match AuthMethod::parse(m) {
                Some(m) if !auth_methods.contains(&m) => auth_methods.push(m),
                Some(_) => {}
                None => self.err(ConfigError::UnknownAuthMethod {
                    section: section.into(),
                    name: m.clone(),
                }),
            }
        }
        if names.is_empty() {
            self.err(ConfigError::Missing {
                section: section.into(),
                field: "auth_methods",
            });
        }
        auth_methods
    }

    /// The claim requirements: scopes, groups, roles, audience.
    fn access_rules(&mut self, section: &str, raw: &RawPolicy) -> AccessRules {
        let mut reqs = Vec::new();
        for (field, claim, default_claim, required) in [
            ("scopes", &raw.scopes_claim, "scope", &raw.scopes_required),
            ("groups", &raw.groups_claim, "groups", &raw.groups_required),
            ("roles", &raw.roles_claim, "roles", &raw.roles_required),
            (
                "audience",
                &raw.audience_claim,
                "aud",
                &raw.audience_required,
            ),
        ] {
            reqs.extend(self.requirement(section, field, claim.clone(), default_claim, required));
        }
        AccessRules::new(reqs)
    }

    /// `upstream_headers_claims` paired with `upstream_headers_names`: claim paths and lower-case header names.
    fn upstream_headers(
        &mut self,
        section: &str,
        claims: &[String],
        names: &[String],
    ) -> Vec<UpstreamHeader> {
        let mut upstream_headers = Vec::new();
        if claims.len() != names.len() {
            self.err(ConfigError::HeaderLengthMismatch {
                section: section.into(),
                claims: claims.len(),
                names: names.len(),
            });
        }
        for (claim, hname) in claims.iter().zip(names) {
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
        upstream_headers
    }

    /// The login callback URL: http(s), no user information, no fragment.
    fn redirect_uri(&mut self, section: &str, raw: Option<String>) -> Option<Url> {
        let redirect_uri = self.url(section, "redirect_uri", raw);
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
        redirect_uri
    }

    /// `backchannel_logout_path`: a path of its own (not the callback's, not `logout_path`).
    fn backchannel_logout_path(
        &mut self,
        section: &str,
        raw: &RawPolicy,
        redirect_uri: Option<&Url>,
    ) -> Option<String> {
        let path = raw.backchannel_logout_path.clone()?;
        let clash = redirect_uri.is_some_and(|u| u.path() == path)
            || raw.logout_path.as_deref() == Some(path.as_str());
        if !path.starts_with('/') || path.contains(['?', '#']) || clash {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!(
                    "backchannel_logout_path must be a path of its own (starting with '/', not the callback's or \
                     logout_path), got {path:?}"
                ),
            });
            return None;
        }
        Some(path)
    }

    /// `logout_path` is a path.
    fn logout_path(&mut self, section: &str, logout_path: Option<&str>) {
        if let Some(lp) = logout_path
            && !lp.starts_with('/')
        {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!("logout_path must start with '/', got {lp:?}"),
            });
        }
    }

    /// Checks each secret of `field` (`session_secret`, `store.secret`: base64 of 32 random bytes; a published one
    /// is a warning) and keys an AES-256-GCM codec with them: `None` when there are none or any is bad (said here,
    /// or by the caller for a missing one).
    fn secret_codec(
        &mut self,
        section: &str,
        field: &str,
        secrets: &[Secret],
    ) -> Option<CookieCodec> {
        let before = self.errors.len();
        for (i, s) in secrets.iter().enumerate() {
            use base64::Engine;
            let which = if secrets.len() > 1 {
                format!("{field}[{i}]")
            } else {
                field.to_string()
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
        if secrets.is_empty() || self.errors.len() != before {
            return None;
        }
        match CookieCodec::new(secrets) {
            Ok(codec) => Some(codec),
            // The checks above accept only what the codec takes; this keeps a disagreement an error, never a
            // login policy without a codec.
            Err(e) => {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: e.to_string(),
                });
                None
            }
        }
    }

    /// `client_credentials_param_type`: with `header`, the client id and secret may also come from the headers
    /// `client_arg` and `client_secret_arg`.
    fn client_credential_headers(
        &mut self,
        section: &str,
        raw: &RawPolicy,
    ) -> Option<(HeaderName, HeaderName)> {
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
        client_credential_headers
    }

    /// `bearer_token_param_type` (default `["header"]`; any of `header`, `query`, `body`, `cookie`) and
    /// `bearer_token_cookie_name` (required with `cookie`, and only then; never the session's own cookie).
    fn bearer_token_places(
        &mut self,
        section: &str,
        raw: &RawPolicy,
        auth_methods: &[AuthMethod],
        login: Option<&LoginSettings>,
    ) -> TokenPlaces {
        let mut places = TokenPlaces::default();
        let Some(types) = &raw.bearer_token_param_type else {
            if raw.bearer_token_cookie_name.is_some() {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: "bearer_token_cookie_name is set but bearer_token_param_type does not list \"cookie\"".into(),
                });
            }
            return places;
        };
        let invalid = |message: String| ConfigError::Invalid {
            section: section.into(),
            message,
        };
        let mut errors = Vec::new();
        places.header = false;
        let mut cookie = false;
        for t in types {
            match t.as_str() {
                "header" => places.header = true,
                "query" => places.query = true,
                "body" => places.body = true,
                "cookie" => cookie = true,
                other => errors.push(invalid(format!(
                    "bearer_token_param_type entries must be \"header\", \"query\", \"body\" or \"cookie\", not {other:?}"
                ))),
            }
        }
        if types.is_empty() {
            errors.push(invalid(
                "bearer_token_param_type lists no place; leave it out for [\"header\"]".into(),
            ));
        }
        match (&raw.bearer_token_cookie_name, cookie) {
            (None, true) => errors.push(ConfigError::Missing {
                section: section.into(),
                field: "bearer_token_cookie_name",
            }),
            (Some(_), false) => errors.push(invalid(
                "bearer_token_cookie_name is set but bearer_token_param_type does not list \"cookie\"".into(),
            )),
            (Some(name), true) => {
                let token_char = |c: char| {
                    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
                };
                let session = login.map(|l| l.cookie_name.as_str());
                if name.is_empty() || !name.chars().all(token_char) {
                    errors.push(invalid(format!(
                        "bearer_token_cookie_name {name:?} is not a valid cookie name"
                    )));
                } else if session.is_some_and(|s| {
                    name == s || name.strip_prefix(s).is_some_and(|rest| rest.starts_with('_'))
                }) || name == crate::login::authcode::LOGIN_COOKIE
                {
                    errors.push(invalid(format!(
                        "bearer_token_cookie_name {name:?} is one of the login's own cookies"
                    )));
                } else {
                    places.cookie = Some(name.clone());
                }
            }
            (None, false) => {}
        }
        let token_methods = auth_methods.iter().any(|m| {
            matches!(
                m,
                AuthMethod::Bearer | AuthMethod::Introspection | AuthMethod::Userinfo
            )
        });
        if !token_methods && places != TokenPlaces::default() && errors.is_empty() {
            errors.push(invalid(
                "bearer_token_param_type needs auth_methods with \"bearer\", \"introspection\" or \"userinfo\""
                    .into(),
            ));
        }
        for e in errors {
            self.err(e);
        }
        places
    }

    /// The browser login and session settings, checked on every policy; `Some` for a policy that allows
    /// `authorization_code` or `session` and has a redirect URI and a codec (otherwise an error is listed).
    fn login_settings(
        &mut self,
        section: &str,
        raw: &RawPolicy,
        redirect_uri: Option<Url>,
        codec: Option<CookieCodec>,
        needs_login: bool,
    ) -> Option<LoginSettings> {
        let post_logout_redirect_uri = self.url(
            section,
            "post_logout_redirect_uri",
            raw.post_logout_redirect_uri.clone(),
        );
        let claims_source = self.claims_source(section, raw.session_claims_source.clone());
        let upstream_id_token_header =
            self.upstream_id_token_header(section, raw.upstream_id_token_header.as_deref());
        let cookie_name = self.cookie_name(section, raw.session_cookie_name.clone());
        let logout_methods = self.logout_methods(section, raw.logout_methods.clone());
        let session_storage = self.session_storage(section, raw.session_storage.as_deref());
        let backchannel_logout_path =
            self.backchannel_logout_path(section, raw, redirect_uri.as_ref());
        match (redirect_uri, needs_login, codec) {
            (Some(redirect_uri), true, Some(codec)) => Some(LoginSettings {
                redirect_uri,
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
                backchannel_logout_path,
                codec,
                session_storage,
            }),
            _ => None,
        }
    }

    /// `session_claims_source`: where a session's claims come from, in order (default: access token, ID token).
    fn claims_source(&mut self, section: &str, raw: Option<Vec<String>>) -> Vec<ClaimsSource> {
        let mut claims_source = Vec::new();
        for src in raw.unwrap_or_else(|| vec!["access_token".into(), "id_token".into()]) {
            match src.as_str() {
                "access_token" => claims_source.push(ClaimsSource::AccessToken),
                "id_token" => claims_source.push(ClaimsSource::IdToken),
                other => self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!("session_claims_source entries must be access_token or id_token, not {other:?}"),
                }),
            }
        }
        claims_source
    }

    /// A provider's `userinfo_endpoint` override: a URL, and https unless the issuer itself is plain http on
    /// loopback (a test or demo IdP): the caller's token goes there as a bearer credential.
    fn userinfo_endpoint(
        &mut self,
        section: &str,
        raw: Option<String>,
        issuer: Option<&str>,
    ) -> Option<Url> {
        let u = self.url(section, "userinfo_endpoint", raw)?;
        let loopback_issuer = issuer
            .and_then(|i| Url::parse(i).ok())
            .is_some_and(|i| i.scheme() == "http" && is_loopback(&i));
        if u.scheme() != "https" && !loopback_issuer {
            self.err(ConfigError::BadUrl {
                section: section.into(),
                field: "userinfo_endpoint",
                reason: "must be https (plain http only when the issuer is http on loopback)"
                    .into(),
            });
            return None;
        }
        Some(u)
    }

    /// `upstream_user_info_header`, lower case, added to the controlled headers; a warning when the policy has no
    /// `userinfo` method (it is then only removed from client requests).
    fn upstream_user_info_header(
        &mut self,
        section: &str,
        raw: Option<&str>,
        auth_methods: &[AuthMethod],
        controlled: &mut Vec<HeaderName>,
    ) -> Option<HeaderName> {
        let h = raw?;
        let Ok(name) = HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) else {
            self.err(ConfigError::BadHeaderName {
                section: section.into(),
                name: h.to_string(),
            });
            return None;
        };
        if !auth_methods.contains(&AuthMethod::Userinfo) {
            self.warn(format!(
                "{section}: upstream_user_info_header is set but auth_methods has no `userinfo`: the header is never set (client copies are still removed)"
            ));
        }
        if name == http::header::AUTHORIZATION || name == http::header::COOKIE {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!("upstream_user_info_header cannot be `{name}`"),
            });
            return None;
        }
        if !controlled.contains(&name) {
            controlled.push(name.clone());
            controlled.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        }
        Some(name)
    }

    /// `upstream_id_token_header`, lower case.
    fn upstream_id_token_header(&mut self, section: &str, raw: Option<&str>) -> Option<HeaderName> {
        let h = raw?;
        match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                self.err(ConfigError::BadHeaderName {
                    section: section.into(),
                    name: h.to_string(),
                });
                None
            }
        }
    }

    /// `session_cookie_name`: letters, digits, `_` or `-` (default `oidc_authz_session`).
    fn cookie_name(&mut self, section: &str, raw: Option<String>) -> String {
        let cookie_name = raw.unwrap_or_else(|| "oidc_authz_session".into());
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
        cookie_name
    }

    /// `logout_methods`: GET, POST or DELETE, upper case, no duplicates, at least one (default POST, DELETE).
    /// `session_storage`: `cookie` (default) or `store`.
    fn session_storage(&mut self, section: &str, raw: Option<&str>) -> SessionStorage {
        match raw {
            None | Some("cookie") => SessionStorage::Cookie,
            Some("store") => SessionStorage::Store,
            Some(other) => {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!(
                        "session_storage must be \"cookie\" or \"store\", not {other:?}"
                    ),
                });
                SessionStorage::Cookie
            }
        }
    }

    fn logout_methods(&mut self, section: &str, raw: Option<Vec<String>>) -> Vec<String> {
        let mut logout_methods = Vec::new();
        for m in raw.unwrap_or_else(|| vec!["POST".into(), "DELETE".into()]) {
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
        logout_methods
    }

    /// Every request header the policy sets or promises to control upstream, sorted; warns about names with `_`.
    fn controlled_headers(
        &mut self,
        section: &str,
        upstream_headers: &[UpstreamHeader],
        login: Option<&LoginSettings>,
        client_credential_headers: Option<&(HeaderName, HeaderName)>,
        auth_methods: &[AuthMethod],
    ) -> Vec<HeaderName> {
        let mut controlled_headers: Vec<HeaderName> =
            upstream_headers.iter().map(|h| h.name.clone()).collect();
        for (what, h) in upstream_headers
            .iter()
            .map(|h| ("upstream_headers_names", &h.name))
            .chain(
                login
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
        if let Some((id_h, secret_h)) = client_credential_headers {
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
            || login.is_some_and(|l| l.upstream_access_token);
        if sends_authorization {
            controlled_headers.push(http::header::AUTHORIZATION);
        }
        if let Some(h) = login.and_then(|l| l.upstream_id_token_header.clone()) {
            controlled_headers.push(h);
        }
        controlled_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        controlled_headers.dedup();
        controlled_headers
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
        if !is_loopback(u) {
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

    /// One `[[routes]]` entry: one path matcher (a regex compiled here, anchored), hosts, methods, a policy.
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
        })
    }
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

/// SHA-256 (hex) of the session and store secrets that appear in this repository's examples, demo and tests: published, so
/// anyone can seal a session with them. `check-config` warns when a configuration uses one. A test keeps the list
/// complete (`published_secrets_are_all_listed`).
const PUBLISHED_SECRETS: &[&str] = &[
    "3c8dbef1b111f5fec3d34f815a2885200484bfe3e5bb3f56e0021c41e0b16f16",
    "4ea50fb41e5ff59a44d05c554489761248f0361c55a2b430068a62e20802754b",
    "4c962ec5d1b8322bf45eda002a940c0a9c1f71f1d9135c0ca2baa76a5dd41ec3",
    "3aa8db4bb651750ee7fb50331e448da7f1cc5ccefd1f64ebe98e398bdfa7e312",
    "25335df24f58912c6068465893f703a6eb0a97b582161943812e4f1cfb45af20",
    "b2212e8408ee8879638195145d945b97b4fd7213b5d47bd12e7943e38d56aa0a",
    "52cc4fa151648c6f8648b0e2602192eb4149a503f62f3038ffc6414935d09902",
];

/// SHA-256 (hex) of the `d` member of every private JWK in this repository (examples, tests): published, so
/// anyone can sign client assertions with them; `check-config` warns when `client_jwk` is one. A test keeps the
/// list complete (`published_client_keys_are_all_listed`).
const PUBLISHED_CLIENT_KEYS: &[&str] = &[
    "a5c74591d05b523c6e94125168258a2ce0ea56c18e172233debea5d5a2c12919",
    "a589740323085e5720c6c619005fe98c7cd005b07ed98281e8cb9f3fb555a06b",
    "fe6fbd4d1fa13242be92735c32855f775582c5a0e84d0682b55caf8c8bc72ccb",
    "13a8dc32d197b8a1e3006aa911608dd6517a41f688a3ce0b17993c33f666b59f",
];

/// Whether these secret bytes are one of [`PUBLISHED_SECRETS`].
fn is_published_secret(bytes: &[u8]) -> bool {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    PUBLISHED_SECRETS.contains(&hex.as_str())
}

/// A policy's forbidden claims, consumer, token/introspection/consumer headers and error answers, validated.
struct ClaimRulesAndHeaders {
    /// `claims_forbidden` as claim paths.
    forbidden: Vec<Vec<String>>,
    /// `consumer_claim` and `consumer_optional`.
    consumer: Option<ConsumerRule>,
    /// `upstream_access_token_header`.
    token_header: TokenHeader,
    /// `upstream_introspection_header`.
    introspection_header: Option<HeaderName>,
    /// `upstream_consumer_header`.
    consumer_header: Option<HeaderName>,
    /// `display_errors` and the two messages.
    error_answers: ErrorAnswers,
    /// The headers above that the policy sets, for `controlled_headers`.
    controlled: Vec<HeaderName>,
}

/// The longest `unauthorized_error_message` / `forbidden_error_message`, in bytes.
const MAX_ERROR_MESSAGE_BYTES: usize = 256;

impl Validator {
    /// `claims_forbidden`, `consumer_claim`, `consumer_optional`, `upstream_consumer_header`,
    /// `upstream_access_token_header`, `upstream_introspection_header`, `display_errors`,
    /// `unauthorized_error_message`, `forbidden_error_message`.
    fn claim_rules_and_headers(
        &mut self,
        section: &str,
        raw: &RawPolicy,
        auth_methods: &[AuthMethod],
        upstream_headers: &[UpstreamHeader],
        login: Option<&LoginSettings>,
        (client_credential_headers, user_info_header): (
            Option<&(HeaderName, HeaderName)>,
            Option<&HeaderName>,
        ),
    ) -> ClaimRulesAndHeaders {
        fn bad_path(p: &[String]) -> bool {
            p.is_empty() || p.iter().any(|k| k.is_empty())
        }
        let mut forbidden = Vec::new();
        for (i, entry) in raw.claims_forbidden.iter().enumerate() {
            let path = match entry {
                ClaimName::Name(n) => vec![n.clone()],
                ClaimName::Path(p) => p.clone(),
            };
            if bad_path(&path) {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!(
                        "claims_forbidden[{i}] must be a claim name or a non-empty list of non-empty keys"
                    ),
                });
            } else if !forbidden.contains(&path) {
                forbidden.push(path);
            }
        }
        let consumer = match &raw.consumer_claim {
            Some(path) if bad_path(path) => {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: "consumer_claim must be a non-empty list of non-empty keys".into(),
                });
                None
            }
            Some(path) => Some(ConsumerRule {
                claim: path.clone(),
                optional: raw.consumer_optional,
            }),
            None => {
                for (key, set) in [
                    ("consumer_optional", raw.consumer_optional),
                    (
                        "upstream_consumer_header",
                        raw.upstream_consumer_header.is_some(),
                    ),
                ] {
                    if set {
                        self.err(ConfigError::Conflict {
                            section: section.into(),
                            message: format!("{key} needs consumer_claim"),
                        });
                    }
                }
                None
            }
        };
        if consumer.is_some()
            && raw.dynamic_metadata == Some(false)
            && raw.upstream_consumer_header.is_none()
        {
            self.warn(format!(
                "{section}: consumer_claim with dynamic_metadata = false and no upstream_consumer_header: the consumer is required but passed on nowhere"
            ));
        }
        let mut taken: Vec<(&str, HeaderName)> = upstream_headers
            .iter()
            .map(|h| ("upstream_headers_names", h.name.clone()))
            .collect();
        if let Some(h) = login.and_then(|l| l.upstream_id_token_header.clone()) {
            taken.push(("upstream_id_token_header", h));
        }
        if let Some((a, b)) = client_credential_headers {
            taken.push(("client_arg", a.clone()));
            taken.push(("client_secret_arg", b.clone()));
        }
        if let Some(h) = user_info_header {
            // One header, one meaning: the userinfo answer would overwrite (or be overwritten by) the other.
            if let Some((other, _)) = taken.iter().find(|(_, t)| t == h) {
                self.err(ConfigError::Conflict {
                    section: section.into(),
                    message: format!(
                        "upstream_user_info_header `{h}` is also {other}: give each its own header"
                    ),
                });
            }
            taken.push(("upstream_user_info_header", h.clone()));
        }
        let mut controlled = Vec::new();
        let mut own_header = |v: &mut Validator, key: &'static str, h: &str| {
            let name = v.set_header_name(section, key, h)?;
            if let Some((other, _)) = taken.iter().find(|(_, t)| *t == name) {
                v.err(ConfigError::Conflict {
                    section: section.into(),
                    message: format!("{key} `{name}` is also {other}: give each its own header"),
                });
                return None;
            }
            taken.push((key, name.clone()));
            controlled.push(name.clone());
            Some(name)
        };
        let consumer_header = raw
            .upstream_consumer_header
            .as_deref()
            .and_then(|h| own_header(self, "upstream_consumer_header", h));
        let introspection_header = raw.upstream_introspection_header.as_deref().and_then(|h| {
            if !auth_methods.contains(&AuthMethod::Introspection) {
                self.warn(format!(
                    "{section}: upstream_introspection_header is set but the policy does not allow introspection: it is never sent (only removed from client requests)"
                ));
            }
            own_header(self, "upstream_introspection_header", h)
        });
        let mut token_header = TokenHeader::default();
        if let Some(spec) = raw.upstream_access_token_header.as_deref() {
            let (name, prefix) = match spec.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (spec, None),
            };
            let prefix_ok = prefix.is_none_or(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            });
            if !prefix_ok {
                self.err(ConfigError::Invalid {
                    section: section.into(),
                    message: format!(
                        "upstream_access_token_header must be `header` or `header:prefix` (prefix: letters, digits, '-', '_', '.'), got {spec:?}"
                    ),
                });
            } else if name.eq_ignore_ascii_case("authorization") {
                token_header.prefix = prefix.map(token_prefix);
            } else if let Some(h) = own_header(self, "upstream_access_token_header", name) {
                token_header = TokenHeader {
                    name: h,
                    prefix: prefix.map(token_prefix),
                };
            }
        }
        let error_answers = ErrorAnswers {
            display: raw.display_errors.unwrap_or(false),
            unauthorized: self.error_message(
                section,
                "unauthorized_error_message",
                raw.unauthorized_error_message.as_deref(),
                "Unauthorized",
            ),
            forbidden: self.error_message(
                section,
                "forbidden_error_message",
                raw.forbidden_error_message.as_deref(),
                "Forbidden",
            ),
        };
        if error_answers.display
            && (raw.unauthorized_error_message.is_some() || raw.forbidden_error_message.is_some())
        {
            self.warn(format!(
                "{section}: display_errors = true: unauthorized_error_message and forbidden_error_message are not used"
            ));
        }
        ClaimRulesAndHeaders {
            forbidden,
            consumer,
            token_header,
            introspection_header,
            consumer_header,
            error_answers,
            controlled,
        }
    }

    /// A header name the policy sets upstream: lower case, not a pseudo-header, a hop-by-hop or reserved one, nor
    /// `cookie`.
    fn set_header_name(&mut self, section: &str, key: &str, h: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(name)
                if !h.starts_with(':')
                    && !is_hop_or_reserved(name.as_str())
                    && name != http::header::COOKIE =>
            {
                if name.as_str().contains('_') {
                    self.warn(format!(
                        "{section}: {key} `{name}` has '_': many upstreams (nginx, CGI/WSGI servers) drop or rename such headers; prefer '-'"
                    ));
                }
                Some(name)
            }
            _ => {
                self.err(ConfigError::BadHeaderName {
                    section: format!("{section}.{key}"),
                    name: h.to_string(),
                });
                None
            }
        }
    }

    /// An error message for 401/403 answers: it goes into the JSON body and the `WWW-Authenticate` quoted
    /// string, so visible ASCII and spaces only, no `"` or `\`, not empty, at most [`MAX_ERROR_MESSAGE_BYTES`].
    fn error_message(
        &mut self,
        section: &str,
        key: &str,
        raw: Option<&str>,
        default: &str,
    ) -> String {
        let Some(m) = raw else {
            return default.to_string();
        };
        let ok = !m.trim().is_empty()
            && m.len() <= MAX_ERROR_MESSAGE_BYTES
            && m.bytes()
                .all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'"' && b != b'\\');
        if !ok {
            self.err(ConfigError::Invalid {
                section: section.into(),
                message: format!(
                    "{key} must be 1 to {MAX_ERROR_MESSAGE_BYTES} visible ASCII characters or spaces, without '\"' or '\\' (it goes into the WWW-Authenticate header)"
                ),
            });
        }
        m.to_string()
    }
}

/// The prefix word of a token header: `bearer` in any case is written `Bearer` (RFC 6750), others as given.
fn token_prefix(p: &str) -> String {
    if p.eq_ignore_ascii_case("bearer") {
        "Bearer".into()
    } else {
        p.to_string()
    }
}

/// Headers that must never be set from a claim.
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

/// Whether a URL's host is loopback (`localhost`, 127.0.0.0/8, ::1).
fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    /// `dynamic_metadata` defaults to true; a consumer that goes nowhere (no metadata, no header) is a warning.
    #[test]
    fn dynamic_metadata_setting() {
        let policy = |extra: &str| {
            format!(
                "{GOOD}\n[policies.more]\nprovider = \"okta\"\nauth_methods = [\"bearer\"]\nconsumer_claim = [\"sub\"]\n{extra}"
            )
        };
        let nowhere = |cfg: &Config| cfg.warnings.iter().any(|w| w.contains("passed on nowhere"));
        let cfg = Config::from_toml(&policy("")).unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.policies.iter().all(|p| p.dynamic_metadata));
        assert!(!nowhere(&cfg), "{:?}", cfg.warnings);
        let cfg = Config::from_toml(&policy("dynamic_metadata = false"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!cfg.policies[1].dynamic_metadata && cfg.policies[0].dynamic_metadata);
        assert!(nowhere(&cfg), "{:?}", cfg.warnings);
        let cfg = Config::from_toml(&policy(
            "dynamic_metadata = false\nupstream_consumer_header = \"x-consumer\"",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!nowhere(&cfg), "{:?}", cfg.warnings);
    }

    /// Issue 15 items 3, 5, 7: the settings land in the model, their headers are controlled, and the defaults are
    /// Kong's.
    #[test]
    fn access_rule_and_header_settings() {
        let cfg = Config::from_toml(&format!(
            "{GOOD}\n{}",
            r#"
[policies.more]
provider = "okta"
auth_methods = ["bearer", "introspection"]
claims_forbidden = ["act", ["realm", "admin"], "https://x.example/role", "act"]
consumer_claim = ["ext", "consumer"]
consumer_optional = true
upstream_consumer_header = "X-Consumer"
upstream_access_token_header = "X-Access-Token:BEARER"
upstream_introspection_header = "X-Introspection"
unauthorized_error_message = "Please sign in"
"#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let api = &cfg.policies[0];
        assert_eq!(api.upstream_access_token_header, TokenHeader::default());
        assert_eq!(api.error_answers, ErrorAnswers::default());
        assert!(!api.error_answers.display);
        assert!(api.access.forbidden().is_empty() && api.access.consumer_rule().is_none());
        let more = &cfg.policies[1];
        assert_eq!(more.name, "more");
        let paths: Vec<String> = more
            .access
            .forbidden()
            .iter()
            .map(|p| p.join("."))
            .collect();
        assert_eq!(paths, ["act", "realm.admin", "https://x.example/role"]);
        assert_eq!(
            more.access.consumer_rule(),
            Some(&ConsumerRule {
                claim: vec!["ext".into(), "consumer".into()],
                optional: true
            })
        );
        assert_eq!(
            more.upstream_access_token_header,
            TokenHeader {
                name: HeaderName::from_static("x-access-token"),
                prefix: Some("Bearer".into())
            }
        );
        assert_eq!(more.upstream_access_token_header.value("t"), "Bearer t");
        assert_eq!(
            more.error_answers.unauthorized, "Please sign in",
            "the 403 message keeps its default"
        );
        assert_eq!(more.error_answers.forbidden, "Forbidden");
        for h in ["x-access-token", "x-consumer", "x-introspection"] {
            assert!(
                more.controlled_headers.iter().any(|c| c == h),
                "{h}: {:?}",
                more.controlled_headers
            );
        }
        let bare = Config::from_toml(&GOOD.replace(
            "scopes_claim = [\"scp\"]",
            "scopes_claim = [\"scp\"]\nupstream_access_token_header = \"authorization\"\ndisplay_errors = true",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let th = &bare.policies[0].upstream_access_token_header;
        assert!(th.is_authorization() && th.prefix.is_none());
        assert_eq!(th.value("t"), "t");
        assert!(bare.policies[0].error_answers.display);
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

    /// `userinfo`: the method, the endpoint override (https unless the issuer is http on loopback), the header
    /// (a controlled header) and its cache lifetime (default `cache_introspection_secs`); errors name their keys.
    #[test]
    fn userinfo_settings() {
        let ui = GOOD.replace(
            "auth_methods = [\"bearer\"]",
            "auth_methods = [\"bearer\", \"userinfo\"]\nupstream_user_info_header = \"X-Userinfo\"\ncache_introspection_secs = 60",
        );
        let cfg = Config::from_toml(&ui).unwrap();
        let p = &cfg.policies[0];
        assert_eq!(p.auth_methods, [AuthMethod::Bearer, AuthMethod::Userinfo]);
        assert_eq!(
            p.upstream_user_info_header.as_ref().unwrap().as_str(),
            "x-userinfo"
        );
        assert!(
            p.controlled_headers
                .iter()
                .any(|h| h.as_str() == "x-userinfo")
        );
        assert_eq!(p.cache_user_info_secs, 60);
        // One header, one meaning: the userinfo header may not be another setting's header (either way round).
        let clashes = [
            (
                "upstream_headers_names",
                ui.replace("\"x-user\"]", "\"X-Userinfo\"]"),
            ),
            (
                "upstream_introspection_header",
                ui.replace(
                    "cache_introspection_secs = 60",
                    "upstream_introspection_header = \"X-USERINFO\"",
                ),
            ),
            (
                "upstream_consumer_header",
                ui.replace(
                    "cache_introspection_secs = 60",
                    "consumer_claim = [\"sub\"]\nupstream_consumer_header = \"x-userinfo\"",
                ),
            ),
            (
                "upstream_access_token_header",
                ui.replace(
                    "cache_introspection_secs = 60",
                    "upstream_access_token_header = \"x-userinfo:Bearer\"",
                ),
            ),
        ];
        for (other, clash) in clashes {
            let err = Config::from_toml(&clash).unwrap_err().to_string();
            assert!(
                err.contains("x-userinfo")
                    && err.contains(other)
                    && err.contains("upstream_user_info_header"),
                "{other}: {err}"
            );
        }
        let own = ui.replace("cache_introspection_secs = 60", "cache_user_info_secs = 5");
        assert_eq!(
            Config::from_toml(&own).unwrap().policies[0].cache_user_info_secs,
            5
        );
        let long = ui.replace(
            "cache_introspection_secs = 60",
            "cache_user_info_secs = 86401",
        );
        let err = Config::from_toml(&long).unwrap_err().to_string();
        assert!(
            err.contains("policies.api") && err.contains("cache_user_info_secs"),
            "{err}"
        );

        let endpoint = |url: &str, issuer: &str| {
            ui.replace(
                "client_id = \"0oa1\"",
                &format!("client_id = \"0oa1\"\nuserinfo_endpoint = \"{url}\""),
            )
            .replace("https://dev-123.okta.com/oauth2/default", issuer)
        };
        let okta = "https://dev-123.okta.com/oauth2/default";
        let cfg = Config::from_toml(&endpoint("https://idp.example.com/userinfo", okta)).unwrap();
        assert_eq!(
            cfg.providers[0]
                .userinfo_endpoint
                .as_ref()
                .unwrap()
                .as_str(),
            "https://idp.example.com/userinfo"
        );
        let loopback = "http://127.0.0.1:9000/oauth2/default";
        assert!(Config::from_toml(&endpoint("http://127.0.0.1:9000/userinfo", loopback)).is_ok());
        for (url, issuer) in [
            ("http://idp.example.com/userinfo", okta),
            (
                "http://idp.example.com/userinfo",
                "http://idp.example.com/oauth2/default",
            ),
            ("not a url", okta),
        ] {
            let err = Config::from_toml(&endpoint(url, issuer)).unwrap_err();
            assert_eq!(err.0[0].kind(), "bad_url", "{url}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains("providers.okta") && shown.contains("userinfo_endpoint"),
                "{shown}"
            );
        }
        for bad in ["bad header", "authorization"] {
            let t = ui.replace("\"X-Userinfo\"", &format!("{bad:?}"));
            let err = Config::from_toml(&t).unwrap_err().to_string();
            assert!(err.contains("policies.api") && err.contains(bad), "{err}");
        }
    }

    fn key_path(name: &str) -> String {
        format!(
            "{}/tests/data/client-keys/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    /// `GOOD` with these lines added to `[providers.okta]`.
    fn with_client_auth(lines: &str) -> String {
        GOOD.replace(
            "client_secret = \"very-secret-value\"\n",
            &format!("client_secret = \"very-secret-value\"\n{lines}\n"),
        )
    }

    #[test]
    fn client_auth_and_its_alias() {
        let cfg = Config::from_toml(GOOD).unwrap();
        assert_eq!(cfg.providers[0].token_endpoint_auth_method, None);
        for (lines, want) in [
            (
                "client_auth = \"client_secret_post\"",
                TokenEndpointAuth::ClientSecretPost,
            ),
            (
                "token_endpoint_auth_method = \"client_secret_post\"",
                TokenEndpointAuth::ClientSecretPost,
            ),
            (
                "client_auth = \"client_secret_basic\"\ntoken_endpoint_auth_method = \"client_secret_basic\"",
                TokenEndpointAuth::ClientSecretBasic,
            ),
            (
                "client_auth = \"client_secret_jwt\"",
                TokenEndpointAuth::ClientSecretJwt,
            ),
            (
                "client_auth = \"client_secret_jwt\"\nclient_alg = \"HS256\"",
                TokenEndpointAuth::ClientSecretJwt,
            ),
            (
                "token_endpoint_auth_method = \"client_secret_jwt\"",
                TokenEndpointAuth::ClientSecretJwt,
            ),
        ] {
            let cfg = Config::from_toml(&with_client_auth(lines)).unwrap();
            assert_eq!(
                cfg.providers[0].token_endpoint_auth_method,
                Some(want),
                "{lines}"
            );
            assert!(cfg.providers[0].client_key.is_none());
        }
        let file = format!(
            "client_auth = \"private_key_jwt\"\nclient_jwk_file = \"{}\"",
            key_path("rsa")
        );
        let cfg = Config::from_toml(&with_client_auth(&file)).unwrap();
        let p = &cfg.providers[0];
        assert_eq!(
            p.token_endpoint_auth_method,
            Some(TokenEndpointAuth::PrivateKeyJwt)
        );
        let key = p.client_key.as_ref().unwrap();
        assert_eq!(
            (key.alg(), key.kid()),
            (jsonwebtoken::Algorithm::RS256, Some("test-rsa-1"))
        );
        // the repository's keys are published: a warning, not an error
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w.contains("client_jwk is a key published")),
            "{:?}",
            cfg.warnings
        );
        // the JWK inline, as a JSON string (e.g. from the environment) or a TOML table, with client_alg
        let text = std::fs::read_to_string(key_path("ec")).unwrap();
        let jwk: serde_json::Value = serde_json::from_str(&text).unwrap();
        let inline = format!(
            "client_auth = \"private_key_jwt\"\nclient_alg = \"ES256\"\nclient_jwk = '{}'",
            jwk
        );
        let cfg = Config::from_toml(&with_client_auth(&inline)).unwrap();
        assert_eq!(
            cfg.providers[0].client_key.as_ref().unwrap().kid(),
            Some("test-ec-1")
        );
        let table: Vec<String> = jwk
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        let table = format!(
            "client_auth = \"private_key_jwt\"\nclient_jwk = {{ {} }}",
            table.join(", ")
        );
        let cfg = Config::from_toml(&with_client_auth(&table)).unwrap();
        assert_eq!(
            cfg.providers[0].client_key.as_ref().unwrap().alg(),
            jsonwebtoken::Algorithm::ES256
        );
        // Kong's shape: a list of one JWK (TOML array of tables)
        let list = table.replace("client_jwk = {", "client_jwk = [{") + "]";
        let cfg = Config::from_toml(&with_client_auth(&list)).unwrap();
        assert_eq!(
            cfg.providers[0].client_key.as_ref().unwrap().kid(),
            Some("test-ec-1")
        );
        // private_key_jwt needs no client_secret
        let no_secret =
            with_client_auth(&file).replace("client_secret = \"very-secret-value\"\n", "");
        assert!(Config::from_toml(&no_secret).is_ok());
    }

    #[test]
    fn client_auth_errors_are_all_listed_and_never_quote_the_key() {
        let rsa = std::fs::read_to_string(key_path("rsa")).unwrap();
        let mut jwk: serde_json::Value = serde_json::from_str(&rsa).unwrap();
        let d = jwk["d"].as_str().unwrap().to_string();
        let mut public = jwk.clone();
        for m in ["d", "p", "q", "dp", "dq", "qi"] {
            public.as_object_mut().unwrap().remove(m);
        }
        let file = format!("client_jwk_file = \"{}\"", key_path("rsa"));
        let cases = [
            (
                "client_auth = \"private_key_jwt\"",
                "needs client_jwk or client_jwk_file",
                "conflict",
            ),
            (
                "client_auth = \"magic\"",
                "client_auth must be one of client_secret_basic, client_secret_post, client_secret_jwt, private_key_jwt",
                "invalid_value",
            ),
            (
                "client_auth = \"client_secret_post\"\ntoken_endpoint_auth_method = \"client_secret_basic\"",
                "differ",
                "conflict",
            ),
            (
                &*format!("client_auth = \"private_key_jwt\"\nclient_jwk = '{public}'"),
                "public key",
                "invalid_value",
            ),
            (
                &*format!("client_auth = \"private_key_jwt\"\nclient_alg = \"ES256\"\n{file}"),
                "does not fit the RSA",
                "invalid_value",
            ),
            (
                &*format!("client_auth = \"private_key_jwt\"\nclient_alg = \"HS256\"\n{file}"),
                "client_alg must be RS256, PS256 or ES256",
                "invalid_value",
            ),
            (
                "client_auth = \"client_secret_jwt\"\nclient_alg = \"RS256\"",
                "does not fit client_secret_jwt",
                "invalid_value",
            ),
            (
                &*format!("client_auth = \"client_secret_basic\"\n{file}"),
                "only used with client_auth = \"private_key_jwt\"",
                "conflict",
            ),
            (
                &*file,
                "only used with client_auth = \"private_key_jwt\"",
                "conflict",
            ),
            (
                &*format!("client_auth = \"private_key_jwt\"\n{file}\nclient_jwk = '{jwk}'"),
                "not both",
                "conflict",
            ),
            (
                "client_auth = \"private_key_jwt\"\nclient_jwk_file = \"/nonexistent/key.json\"",
                "cannot read client_jwk_file",
                "invalid_value",
            ),
            (
                "client_auth = \"private_key_jwt\"\nclient_jwk = 'not json'",
                "not a JWK",
                "invalid_value",
            ),
        ];
        for (lines, want, kind) in cases {
            let text = with_client_auth(lines);
            let err = Config::from_toml(&text).unwrap_err();
            assert_eq!(err.0.len(), 1, "{lines}: {err}");
            assert_eq!(err.0[0].kind(), kind, "{lines}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains(want) && shown.contains("providers.okta"),
                "{lines}: {shown}"
            );
            assert!(!shown.contains(&d[..16]), "{shown}");
        }
        // a key with its d swapped for another's: the parts do not form a key
        jwk["d"] = serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(key_path("rsa-other")).unwrap(),
        )
        .unwrap()["d"]
            .clone();
        let err = Config::from_toml(&with_client_auth(&format!(
            "client_auth = \"private_key_jwt\"\nclient_jwk = '{jwk}'"
        )))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("do not form a valid RSA private key"),
            "{err}"
        );
        // without client_id there is no iss for the assertion
        let no_id = with_client_auth(&format!("client_auth = \"private_key_jwt\"\n{file}"))
            .replace("client_id = \"0oa1\"\n", "");
        assert!(
            Config::from_toml(&no_id)
                .unwrap_err()
                .to_string()
                .contains("needs client_id")
        );
    }

    #[test]
    fn the_client_key_does_not_debug_print() {
        let rsa = std::fs::read_to_string(key_path("rsa")).unwrap();
        let jwk: serde_json::Value = serde_json::from_str(&rsa).unwrap();
        let cfg = Config::from_toml(&with_client_auth(&format!(
            "client_auth = \"private_key_jwt\"\nclient_jwk = '{jwk}'"
        )))
        .unwrap();
        let dbg = format!("{cfg:?}");
        for m in ["d", "p", "q", "dp", "dq", "qi"] {
            let v = jwk[m].as_str().unwrap();
            assert!(!dbg.contains(&v[..16]), "{m} in {dbg}");
        }
        assert!(dbg.contains("ClientKey"), "{dbg}");
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
    /// Every text file of this repository with its contents (not target/, node_modules/, .git/, .venv/, nor
    /// tests/data/invalid, which holds deliberately bad values).
    fn repository_texts() -> Vec<(std::path::PathBuf, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut stack = vec![root.to_path_buf()];
        let mut out = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if path.is_dir() {
                    if !matches!(name.as_str(), "target" | "node_modules" | ".git" | ".venv")
                        && !path.ends_with("tests/data/invalid")
                    {
                        stack.push(path);
                    }
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(&path) {
                    out.push((path, text));
                }
            }
        }
        out
    }

    /// Every 32-byte base64 secret written in this repository (examples, demo, tests, docs) is in
    /// `PUBLISHED_SECRETS`, so `check-config` warns whoever copies one; and none of them is weak.
    #[test]
    fn published_secrets_are_all_listed() {
        use base64::Engine;
        let mut found = 0;
        for (path, text) in repository_texts() {
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
                    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value) else {
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
        assert!(found >= 5, "the scan found only {found} secrets");
    }

    /// Every private JWK written in this repository (its `d` member, in JSON or TOML) is in
    /// `PUBLISHED_CLIENT_KEYS`, so `check-config` warns whoever copies one as `client_jwk`.
    #[test]
    fn published_client_keys_are_all_listed() {
        use sha2::Digest;
        let member = regex::Regex::new(r#"(?:"d"\s*:|\bd\s*=)\s*"([A-Za-z0-9_-]{32,})""#).unwrap();
        let mut found = 0;
        for (path, text) in repository_texts() {
            for m in member.captures_iter(&text) {
                let d = &m[1];
                let digest = sha2::Sha256::digest(d.as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                found += 1;
                assert!(
                    PUBLISHED_CLIENT_KEYS.contains(&hex.as_str()),
                    "{}: a private JWK not in PUBLISHED_CLIENT_KEYS (sha256 of d: {hex})",
                    path.display()
                );
            }
        }
        assert!(found >= 4, "the scan found only {found} private JWKs");
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
