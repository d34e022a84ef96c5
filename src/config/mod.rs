//! Configuration: figment (file + `OIDC_AUTHZ_` env) -> raw serde structs -> one validated, typed [`Config`].
//!
//! Everything that can be checked at load time is checked here (URLs parsed, regexes compiled, header names
//! validated, names cross-referenced, cookie codecs keyed), and every problem is collected so that `check-config`
//! lists them all. `raw` holds the serde shapes, `model` the validated types every module reads (re-exported
//! here), `validate` the rules between them; this module loads and reports.

mod model;
mod raw;
mod validate;

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml, Yaml};
use figment::value::Value;

pub use model::{
    AuthMethod, ClaimsSource, Config, LogFormat, LoginSettings, Policy, ProviderConfig, Secret,
    ServerConfig, SessionStorage, StoreBackendConfig, StoreConfig, TokenEndpointAuth,
    UpstreamHeader,
};
pub use model::{ErrorAnswers, TokenHeader};

/// Environment variable that may name the config file.
pub const CONFIG_ENV: &str = "OIDC_AUTHZ_CONFIG";
/// Prefix of environment overrides (`OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET`).
pub const ENV_PREFIX: &str = "OIDC_AUTHZ_";

/// The largest accepted bearer token, in bytes; anything longer is refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

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
    #[error("{section}: unknown auth method `{name}` (known: {known})", known = AuthMethod::names())]
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

impl Config {
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
        validate::config(&value).map_err(InvalidConfig)
    }
}

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
