//! The serde shapes of the configuration file, as written: every field optional or defaulted, nothing checked.
//! [`super::validate`] turns them into the typed [`super::model`] values.

use std::path::PathBuf;

use serde::Deserialize;

use super::model::Secret;

/// `[server]`.
#[derive(Deserialize, Default)]
pub(super) struct RawServer {
    pub(super) grpc_addr: Option<String>,
    pub(super) admin_addr: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) token_cache_entries: Option<u64>,
    pub(super) shutdown_grace_secs: Option<u64>,
    pub(super) check_timeout_ms: Option<u64>,
}

/// `[store]`.
#[derive(Deserialize, Default)]
pub(super) struct RawStore {
    pub(super) backend: Option<String>,
    pub(super) url: Option<UrlList>,
    #[serde(default)]
    pub(super) cluster: bool,
    pub(super) key_prefix: Option<String>,
    pub(super) secret: Option<Secret>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) timeout_ms: Option<u64>,
}

/// `url` may be one URL or a list (the nodes of a Redis Cluster).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum UrlList {
    One(String),
    Many(Vec<String>),
}

/// One `[providers.NAME]`.
#[derive(Deserialize)]
pub(super) struct RawProvider {
    pub(super) issuer: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<Secret>,
    pub(super) client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    pub(super) jwks_uri: Option<String>,
    pub(super) token_endpoint: Option<String>,
    pub(super) introspection_endpoint: Option<String>,
    pub(super) authorization_endpoint: Option<String>,
    pub(super) end_session_endpoint: Option<String>,
    pub(super) userinfo_endpoint: Option<String>,
    pub(super) leeway_secs: Option<u64>,
    pub(super) http_timeout_ms: Option<u64>,
    pub(super) jwks_refresh_secs: Option<u64>,
    pub(super) jwks_min_refetch_secs: Option<u64>,
    pub(super) token_endpoint_auth_method: Option<String>,
    pub(super) client_auth: Option<String>,
    pub(super) client_jwk: Option<JwkText>,
    pub(super) client_jwk_file: Option<PathBuf>,
    pub(super) client_alg: Option<String>,
    pub(super) client_lockout_threshold: Option<u32>,
    pub(super) client_lockout_secs: Option<u64>,
    pub(super) client_credentials_rate: Option<u32>,
    pub(super) client_credentials_burst: Option<u32>,
}

/// `client_jwk`: the private JWK as JSON text (a string, as from the environment), a TOML table, or a list of one
/// (Kong's shape).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum JwkText {
    Text(Secret),
    Table(serde_json::Map<String, serde_json::Value>),
    List(Vec<serde_json::Value>),
}

/// One `[policies.NAME]`.
#[derive(Deserialize)]
pub(super) struct RawPolicy {
    pub(super) provider: Option<String>,
    /// Several issuers on one policy (instead of `provider`): a JWT's `iss` picks one.
    pub(super) providers: Option<Vec<String>>,
    #[serde(default)]
    pub(super) auth_methods: Vec<String>,
    pub(super) scopes_claim: Option<Vec<String>>,
    #[serde(default)]
    pub(super) scopes_required: Vec<String>,
    pub(super) groups_claim: Option<Vec<String>>,
    #[serde(default)]
    pub(super) groups_required: Vec<String>,
    pub(super) roles_claim: Option<Vec<String>>,
    #[serde(default)]
    pub(super) roles_required: Vec<String>,
    pub(super) audience_claim: Option<Vec<String>>,
    #[serde(default)]
    pub(super) audience_required: Vec<String>,
    #[serde(default)]
    pub(super) upstream_headers_claims: Vec<String>,
    #[serde(default)]
    pub(super) upstream_headers_names: Vec<String>,
    #[serde(default)]
    pub(super) introspect_jwt_tokens: bool,
    pub(super) dynamic_metadata: Option<bool>,
    #[serde(default)]
    pub(super) allow_any_audience: bool,
    pub(super) cache_introspection_secs: Option<u64>,
    pub(super) cache_ttl_neg_secs: Option<u64>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) redirect_uri: Option<String>,
    pub(super) logout_path: Option<String>,
    pub(super) session_secret: Option<SecretList>,
    #[serde(default)]
    pub(super) client_credentials_param_type: Vec<String>,
    pub(super) client_arg: Option<String>,
    pub(super) client_secret_arg: Option<String>,
    pub(super) session_cookie_name: Option<String>,
    pub(super) session_idle_timeout_secs: Option<u64>,
    pub(super) session_absolute_timeout_secs: Option<u64>,
    pub(super) refresh_leeway_secs: Option<u64>,
    pub(super) post_logout_redirect_uri: Option<String>,
    pub(super) session_claims_source: Option<Vec<String>>,
    pub(super) upstream_access_token: Option<bool>,
    pub(super) upstream_id_token_header: Option<String>,
    pub(super) logout_methods: Option<Vec<String>>,
    pub(super) logout_revoke: Option<bool>,
    pub(super) session_storage: Option<String>,
    pub(super) backchannel_logout_path: Option<String>,
    pub(super) upstream_user_info_header: Option<String>,
    pub(super) cache_user_info_secs: Option<u64>,
    pub(super) bearer_token_param_type: Option<Vec<String>>,
    pub(super) bearer_token_cookie_name: Option<String>,
    // Access rules, upstream headers and error answers of issue 15 (items 3, 5, 7).
    #[serde(default)]
    pub(super) claims_forbidden: Vec<ClaimName>,
    pub(super) consumer_claim: Option<Vec<String>>,
    #[serde(default)]
    pub(super) consumer_optional: bool,
    pub(super) upstream_consumer_header: Option<String>,
    pub(super) upstream_access_token_header: Option<String>,
    pub(super) upstream_introspection_header: Option<String>,
    pub(super) display_errors: Option<bool>,
    pub(super) unauthorized_error_message: Option<String>,
    pub(super) forbidden_error_message: Option<String>,
}

/// One `claims_forbidden` entry: a top-level claim name as Kong writes it (taken whole: `https://x.example/role`
/// keeps its dots), or a claim path as a list of keys like the `*_claim` settings.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum ClaimName {
    Name(String),
    Path(Vec<String>),
}

/// `session_secret` may be one secret or a list (newest first).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SecretList {
    One(Secret),
    Many(Vec<Secret>),
}

/// One `[[routes]]` entry.
#[derive(Deserialize)]
pub(super) struct RawRoute {
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) path_exact: Option<String>,
    pub(super) path_regex: Option<String>,
    #[serde(default)]
    pub(super) methods: Vec<String>,
    pub(super) policy: Option<String>,
}
