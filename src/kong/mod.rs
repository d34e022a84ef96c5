//! `oidc-authz import-kong`: Kong declarative config (decK) with `openid-connect` plugins -> oidc-authz config.
//!
//! [`PARAMS`] is the mapping, as data: every Kong `openid-connect` parameter the importer knows, the oidc-authz
//! name it becomes or the reason it does not, and when leaving it out would let through a request Kong refuses
//! ([`Risk`]). [`deck`] reads the decK file (services, routes, plugins; route > service > global),
//! [`convert`] turns one plugin configuration into a provider and a policy, [`envoy`] writes Envoy's routes.
//! [`import`] ties them together; `main` prints the result and exits 65 when [`Import::has_errors`].

mod convert;
mod deck;
mod envoy;

use serde_json::Value;

/// Where a mapped Kong parameter lands in the oidc-authz config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A key of `[providers.NAME]`.
    Provider,
    /// A key of `[policies.NAME]`.
    Policy,
    /// A key of the top-level `[store]`.
    Store,
}

/// What becomes of one Kong parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Mapped to this oidc-authz key; `partial` says what differs, when something does.
    Mapped {
        /// The oidc-authz key.
        to: &'static str,
        /// Its table.
        level: Level,
        /// What is not carried over, if anything.
        partial: Option<&'static str>,
    },
    /// Meaningful under Envoy too, but oidc-authz has no equivalent (yet).
    Unsupported(&'static str),
    /// Has no meaning for an ext_authz service (Kong's own machinery, or oidc-authz always does it).
    NotApplicable(&'static str),
}

/// When leaving an unmapped parameter out would weaken access control compared to Kong: such a value makes the
/// import fail (exit 65).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// Never: without it oidc-authz is as strict as Kong or stricter.
    Never,
    /// Any value other than null, false, `""` or `[]`.
    IfSet,
    /// The value `true`.
    IfTrue,
    /// Any value other than null and this string (e.g. `"off"`).
    Unless(&'static str),
}

impl Risk {
    /// Whether this value, dropped, would let through a request Kong refuses.
    pub fn weakens(self, v: &Value) -> bool {
        match self {
            Risk::Never => false,
            Risk::IfSet => is_set(v),
            Risk::IfTrue => v == &Value::Bool(true),
            Risk::Unless(ok) => !v.is_null() && v.as_str() != Some(ok),
        }
    }
}

/// A value that says something: not null, `false`, `""`, `[]` or `{}`.
pub(crate) fn is_set(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// One row of the mapping table.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The Kong `openid-connect` parameter (`config.NAME`).
    pub kong: &'static str,
    /// What it becomes.
    pub mapping: Mapping,
    /// When dropping it weakens access control (only consulted for unmapped parameters).
    pub risk: Risk,
}

const fn provider(to: &'static str) -> Mapping {
    Mapping::Mapped {
        to,
        level: Level::Provider,
        partial: None,
    }
}
const fn policy(to: &'static str) -> Mapping {
    Mapping::Mapped {
        to,
        level: Level::Policy,
        partial: None,
    }
}
const fn policy_partly(to: &'static str, partial: &'static str) -> Mapping {
    Mapping::Mapped {
        to,
        level: Level::Policy,
        partial: Some(partial),
    }
}
const fn provider_partly(to: &'static str, partial: &'static str) -> Mapping {
    Mapping::Mapped {
        to,
        level: Level::Provider,
        partial: Some(partial),
    }
}
const fn p(kong: &'static str, mapping: Mapping) -> Param {
    Param {
        kong,
        mapping,
        risk: Risk::Never,
    }
}
const fn risky(kong: &'static str, mapping: Mapping, risk: Risk) -> Param {
    Param {
        kong,
        mapping,
        risk,
    }
}
use Mapping::{NotApplicable as Na, Unsupported as Un};

const ALWAYS_VERIFIED: &str = "oidc-authz always verifies this; it cannot be turned off";
const NO_CONSUMERS: &str = "oidc-authz has no Kong consumers (no consumer registry)";
const LOGIN_FIXED: &str = "oidc-authz's login always uses the code flow with PKCE S256, state and nonce, and returns to the original URL";
const COOKIE_FIXED: &str = "oidc-authz's cookies are always HttpOnly, SameSite=Lax, Path=/, host-only, and Secure when redirect_uri is https";
const NO_EXTRA_ARGS: &str = "oidc-authz sends no extra arguments or headers to the provider";
const NO_DOWNSTREAM: &str =
    "oidc-authz answers only the ext_authz Check; it sets no response headers on an allow";
const KONG_CACHE: &str = "Kong's node cache; oidc-authz sizes its caches by token lifetime";
const HTTP_CLIENT: &str =
    "oidc-authz's one HTTP client (TLS always verified, no proxy settings, HTTP/1.1 and 2)";

/// Every Kong `openid-connect` parameter the importer knows (Kong Gateway 3.x names), in Kong's order of topics.
pub static PARAMS: &[Param] = &[
    // --- the provider and this service's client
    p(
        "issuer",
        provider_partly(
            "issuer",
            "a discovery URL (…/.well-known/openid-configuration) is cut back to the issuer",
        ),
    ),
    p(
        "client_id",
        provider_partly("client_id", "the first client only"),
    ),
    p(
        "client_secret",
        provider_partly(
            "client_secret",
            "the first client only; a {vault://…} reference becomes a client_secret_file to fill",
        ),
    ),
    p(
        "client_auth",
        provider_partly("client_auth", "the first client only"),
    ),
    p(
        "client_jwk",
        provider_partly("client_jwk", "the first client only"),
    ),
    p(
        "client_alg",
        provider_partly("client_alg", "the first client only"),
    ),
    p("token_endpoint", provider("token_endpoint")),
    p("introspection_endpoint", provider("introspection_endpoint")),
    p("authorization_endpoint", provider("authorization_endpoint")),
    p("end_session_endpoint", provider("end_session_endpoint")),
    p("leeway", provider("leeway_secs")),
    p("timeout", provider("http_timeout_ms")),
    p("rediscovery_lifetime", provider("jwks_min_refetch_secs")),
    p(
        "token_endpoint_auth_method",
        provider_partly("client_auth", "older name of client_auth"),
    ),
    p(
        "introspection_endpoint_auth_method",
        Un("oidc-authz authenticates every call of a client with providers.NAME.client_auth"),
    ),
    p(
        "revocation_endpoint",
        Un("taken from discovery (revocation_endpoint)"),
    ),
    p(
        "revocation_endpoint_auth_method",
        Un("oidc-authz authenticates every call of a client with providers.NAME.client_auth"),
    ),
    p(
        "userinfo_endpoint",
        Un("taken from discovery (userinfo_endpoint)"),
    ),
    p(
        "token_exchange_endpoint",
        Un("oidc-authz does not exchange tokens"),
    ),
    p(
        "extra_jwks_uris",
        Un("only the provider's jwks_uri is trusted (fewer keys: stricter)"),
    ),
    p("discovery_headers_names", Un(NO_EXTRA_ARGS)),
    p("discovery_headers_values", Un(NO_EXTRA_ARGS)),
    p(
        "issuers_allowed",
        Na("oidc-authz accepts only the configured issuer(s) (stricter)"),
    ),
    p(
        "using_pseudo_issuer",
        Un("oidc-authz needs the provider's real issuer and discovery"),
    ),
    p(
        "client_arg",
        policy_partly(
            "client_arg",
            "used by client_credentials_param_type = [\"header\"]",
        ),
    ),
    p(
        "tls_client_auth_cert_id",
        Un("oidc-authz does not authenticate with client certificates"),
    ),
    p("tls_client_auth_ssl_verify", Un(HTTP_CLIENT)),
    p(
        "mtls_token_endpoint",
        Un("oidc-authz does not authenticate with client certificates"),
    ),
    p(
        "mtls_introspection_endpoint",
        Un("oidc-authz does not authenticate with client certificates"),
    ),
    p(
        "mtls_revocation_endpoint",
        Un("oidc-authz does not authenticate with client certificates"),
    ),
    // --- how credentials arrive
    p(
        "auth_methods",
        policy_partly(
            "auth_methods",
            "password, refresh_token and kong_oauth2 are not supported and are dropped (stricter)",
        ),
    ),
    p("bearer_token_param_type", policy("bearer_token_param_type")),
    p(
        "bearer_token_cookie_name",
        policy("bearer_token_cookie_name"),
    ),
    p(
        "client_credentials_param_type",
        policy_partly(
            "client_credentials_param_type",
            "header -> basic + header; query and body are not supported (stricter)",
        ),
    ),
    p(
        "id_token_param_type",
        Un("oidc-authz does not take ID tokens from requests"),
    ),
    p(
        "id_token_param_name",
        Un("oidc-authz does not take ID tokens from requests"),
    ),
    p(
        "refresh_token_param_type",
        Un("oidc-authz does not take refresh tokens from requests"),
    ),
    p(
        "refresh_token_param_name",
        Un("oidc-authz does not take refresh tokens from requests"),
    ),
    p(
        "password_param_type",
        Un("the password grant is not supported"),
    ),
    p(
        "anonymous",
        Un("no anonymous consumer: a request Kong would pass as anonymous gets 401 (stricter)"),
    ),
    p(
        "run_on_preflight",
        Na("CORS preflights are Envoy's (cors filter); oidc-authz checks what Envoy sends"),
    ),
    // --- verification
    p("verify_signature", Na(ALWAYS_VERIFIED)),
    p("verify_claims", Na(ALWAYS_VERIFIED)),
    p("verify_nonce", Na(ALWAYS_VERIFIED)),
    p("verify_parameters", Na(ALWAYS_VERIFIED)),
    p("ignore_signature", Na(ALWAYS_VERIFIED)),
    p(
        "enable_hs_signatures",
        Un("HS256 tokens are refused (asymmetric signatures only: stricter)"),
    ),
    risky(
        "max_age",
        Un("oidc-authz does not check auth_time against a maximum age"),
        Risk::IfSet,
    ),
    p("introspect_jwt_tokens", policy("introspect_jwt_tokens")),
    p(
        "introspection_hint",
        Un("oidc-authz always sends token_type_hint=access_token"),
    ),
    p("introspection_headers_names", Un(NO_EXTRA_ARGS)),
    p("introspection_headers_values", Un(NO_EXTRA_ARGS)),
    p("introspection_headers_client", Un(NO_EXTRA_ARGS)),
    p("introspection_post_args_names", Un(NO_EXTRA_ARGS)),
    p("introspection_post_args_values", Un(NO_EXTRA_ARGS)),
    p("introspection_post_args_client", Un(NO_EXTRA_ARGS)),
    p(
        "introspection_accept",
        Un("oidc-authz asks for application/json"),
    ),
    p(
        "introspection_token_param_name",
        Un("oidc-authz sends the RFC 7662 name, token"),
    ),
    risky(
        "proof_of_possession_mtls",
        Un("certificate-bound tokens (RFC 8705) are not checked"),
        Risk::Unless("off"),
    ),
    risky(
        "proof_of_possession_dpop",
        Un("DPoP-bound tokens (RFC 9449) are not checked"),
        Risk::Unless("off"),
    ),
    p(
        "proof_of_possession_auth_methods_validation",
        Un("proof of possession is not supported"),
    ),
    p("dpop_use_nonce", Un("DPoP is not supported")),
    p("dpop_proof_lifetime", Un("DPoP is not supported")),
    // --- access control
    p("scopes", policy("scopes")),
    p("scopes_claim", policy("scopes_claim")),
    p("scopes_required", policy("scopes_required")),
    p("audience_claim", policy("audience_claim")),
    p(
        "audience_required",
        policy_partly(
            "audience_required",
            "Kong checks `aud` only here: the policy gets allow_any_audience = true and this rule",
        ),
    ),
    p(
        "audience",
        Un("oidc-authz sends no audience to the authorization endpoint"),
    ),
    p("groups_claim", policy("groups_claim")),
    p("groups_required", policy("groups_required")),
    p("roles_claim", policy("roles_claim")),
    p("roles_required", policy("roles_required")),
    p("claims_forbidden", policy("claims_forbidden")),
    p(
        "authenticated_groups_claim",
        Na("feeds Kong's ACL plugin; use groups_claim/groups_required instead"),
    ),
    p(
        "consumer_claim",
        policy_partly(
            "consumer_claim",
            "the claim is forwarded (upstream_consumer_header); Kong's consumer lookup is not",
        ),
    ),
    risky("consumer_by", Un(NO_CONSUMERS), Risk::Never),
    p(
        "consumer_optional",
        Un(
            "consumer_optional = false (Kong's default) with consumer_claim needs a consumer registry",
        ),
    ),
    p("credential_claim", Na(NO_CONSUMERS)),
    p("by_username_ignore_case", Na(NO_CONSUMERS)),
    // --- what goes upstream
    p("upstream_headers_claims", policy("upstream_headers_claims")),
    p("upstream_headers_names", policy("upstream_headers_names")),
    p(
        "upstream_access_token_header",
        policy_partly(
            "upstream_access_token_header",
            "authorization:bearer (Kong's default) is oidc-authz's default; null -> upstream_access_token = false",
        ),
    ),
    p(
        "upstream_id_token_header",
        policy("upstream_id_token_header"),
    ),
    p(
        "upstream_introspection_header",
        policy("upstream_introspection_header"),
    ),
    p(
        "upstream_user_info_header",
        policy("upstream_user_info_header"),
    ),
    p(
        "upstream_refresh_token_header",
        Un("the refresh token never leaves oidc-authz"),
    ),
    p(
        "upstream_access_token_jwk_header",
        Un("key material is not forwarded"),
    ),
    p(
        "upstream_id_token_jwk_header",
        Un("key material is not forwarded"),
    ),
    p(
        "upstream_user_info_jwt_header",
        Un("oidc-authz does not sign user info"),
    ),
    p(
        "upstream_introspection_jwt_header",
        Un("oidc-authz does not sign introspection answers"),
    ),
    p(
        "upstream_session_id_header",
        Un("session ids are not forwarded"),
    ),
    p("downstream_headers_claims", Un(NO_DOWNSTREAM)),
    p("downstream_headers_names", Un(NO_DOWNSTREAM)),
    p("downstream_access_token_header", Un(NO_DOWNSTREAM)),
    p("downstream_access_token_jwk_header", Un(NO_DOWNSTREAM)),
    p("downstream_id_token_header", Un(NO_DOWNSTREAM)),
    p("downstream_id_token_jwk_header", Un(NO_DOWNSTREAM)),
    p("downstream_refresh_token_header", Un(NO_DOWNSTREAM)),
    p("downstream_user_info_header", Un(NO_DOWNSTREAM)),
    p("downstream_user_info_jwt_header", Un(NO_DOWNSTREAM)),
    p("downstream_introspection_header", Un(NO_DOWNSTREAM)),
    p("downstream_introspection_jwt_header", Un(NO_DOWNSTREAM)),
    p("downstream_session_id_header", Un(NO_DOWNSTREAM)),
    risky(
        "hide_credentials",
        Un("the client's credential (Authorization header, cookie) still reaches the upstream"),
        Risk::IfTrue,
    ),
    p(
        "search_user_info",
        Un("oidc-authz does not call the userinfo endpoint for claims"),
    ),
    // --- answers
    p(
        "unauthorized_error_message",
        policy("unauthorized_error_message"),
    ),
    p("forbidden_error_message", policy("forbidden_error_message")),
    p("display_errors", policy("display_errors")),
    p(
        "expose_error_code",
        Na("oidc-authz always sends RFC 6750 WWW-Authenticate error codes"),
    ),
    p(
        "unauthorized_redirect_uri",
        Un("a refusal is an answer, never a redirect"),
    ),
    p(
        "forbidden_redirect_uri",
        Un("a refusal is an answer, never a redirect"),
    ),
    p(
        "unexpected_redirect_uri",
        Un("a refusal is an answer, never a redirect"),
    ),
    p(
        "forbidden_destroy_session",
        Un("a 403 keeps the session (the user may be allowed elsewhere)"),
    ),
    // --- browser login
    p(
        "redirect_uri",
        policy_partly(
            "redirect_uri",
            "the first URI only; Kong's default (the request URL) cannot be imported",
        ),
    ),
    p("response_mode", Na(LOGIN_FIXED)),
    p("response_type", Na(LOGIN_FIXED)),
    p("require_proof_key_for_code_exchange", Na(LOGIN_FIXED)),
    p(
        "require_pushed_authorization_requests",
        Un("PAR is not supported"),
    ),
    p(
        "pushed_authorization_request_endpoint",
        Un("PAR is not supported"),
    ),
    p(
        "pushed_authorization_request_endpoint_auth_method",
        Un("PAR is not supported"),
    ),
    p(
        "require_signed_request_object",
        Un("request objects are not supported"),
    ),
    p("authorization_query_args_names", Un(NO_EXTRA_ARGS)),
    p("authorization_query_args_values", Un(NO_EXTRA_ARGS)),
    p("authorization_query_args_client", Un(NO_EXTRA_ARGS)),
    p("token_post_args_names", Un(NO_EXTRA_ARGS)),
    p("token_post_args_values", Un(NO_EXTRA_ARGS)),
    p("token_post_args_client", Un(NO_EXTRA_ARGS)),
    p("token_headers_names", Un(NO_EXTRA_ARGS)),
    p("token_headers_values", Un(NO_EXTRA_ARGS)),
    p("token_headers_client", Un(NO_EXTRA_ARGS)),
    p("token_headers_replay", Un(NO_EXTRA_ARGS)),
    p("token_headers_prefix", Un(NO_EXTRA_ARGS)),
    p("token_headers_grants", Un(NO_EXTRA_ARGS)),
    p("login_action", Na(LOGIN_FIXED)),
    p("login_methods", Na(LOGIN_FIXED)),
    p("login_tokens", Na(LOGIN_FIXED)),
    p("login_redirect_mode", Na(LOGIN_FIXED)),
    p(
        "login_redirect_uri",
        Un("after login the browser returns to the URL it asked for"),
    ),
    p("preserve_query_args", Na(LOGIN_FIXED)),
    p("authorization_cookie_name", Na(COOKIE_FIXED)),
    p("authorization_cookie_path", Na(COOKIE_FIXED)),
    p("authorization_cookie_domain", Na(COOKIE_FIXED)),
    p("authorization_cookie_same_site", Na(COOKIE_FIXED)),
    p("authorization_cookie_http_only", Na(COOKIE_FIXED)),
    p("authorization_cookie_secure", Na(COOKIE_FIXED)),
    p("authorization_cookie_lifetime", Na(COOKIE_FIXED)),
    p("authorization_rolling_timeout", Na(COOKIE_FIXED)),
    p(
        "refresh_tokens",
        Na("sessions always refresh their access token when it expires"),
    ),
    p("disable_session", Un("every login policy keeps a session")),
    // --- logout
    p(
        "logout_uri_suffix",
        policy_partly(
            "logout_path",
            "a suffix under any path becomes one path: the route's single plain path + the suffix",
        ),
    ),
    p("logout_methods", policy("logout_methods")),
    p("logout_revoke", policy("logout_revoke")),
    p(
        "logout_revoke_access_token",
        policy_partly("logout_revoke", "revokes refresh and access token together"),
    ),
    p(
        "logout_revoke_refresh_token",
        policy_partly("logout_revoke", "revokes refresh and access token together"),
    ),
    p(
        "logout_redirect_uri",
        policy_partly("post_logout_redirect_uri", "the first URI only"),
    ),
    p(
        "logout_query_arg",
        Un("logout is logout_path with logout_methods"),
    ),
    p(
        "logout_post_arg",
        Un("logout is logout_path with logout_methods"),
    ),
    // --- session
    p(
        "session_secret",
        policy_partly(
            "session_secret",
            "Kong's secret is not 32 random bytes: a fresh one is generated (sessions do not carry over)",
        ),
    ),
    p("session_cookie_name", policy("session_cookie_name")),
    p(
        "session_idling_timeout",
        policy("session_idle_timeout_secs"),
    ),
    p(
        "session_absolute_timeout",
        policy("session_absolute_timeout_secs"),
    ),
    p(
        "session_cookie_idletime",
        policy_partly(
            "session_idle_timeout_secs",
            "older name of session_idling_timeout",
        ),
    ),
    p(
        "session_cookie_lifetime",
        policy_partly(
            "session_absolute_timeout_secs",
            "older name of session_absolute_timeout",
        ),
    ),
    p(
        "session_rolling_timeout",
        Un("sessions are bounded by session_idle_timeout_secs and session_absolute_timeout_secs"),
    ),
    p(
        "session_storage",
        policy_partly(
            "session_storage",
            "cookie -> cookie; redis -> store (with [store]); memcache is not supported",
        ),
    ),
    Param {
        kong: "session_redis_host",
        mapping: Mapping::Mapped {
            to: "url",
            level: Level::Store,
            partial: Some(
                "redis://host:port; TLS, auth, cluster and sentinel settings are not imported",
            ),
        },
        risk: Risk::Never,
    },
    Param {
        kong: "session_redis_port",
        mapping: Mapping::Mapped {
            to: "url",
            level: Level::Store,
            partial: Some("part of store.url"),
        },
        risk: Risk::Never,
    },
    p(
        "session_redis_prefix",
        Un("[store] key_prefix is oidc-authz's own"),
    ),
    p(
        "session_redis_socket",
        Un("[store] url is redis:// or rediss://"),
    ),
    p(
        "session_redis_username",
        Un("put the credentials in [store] url"),
    ),
    p(
        "session_redis_password",
        Un("put the credentials in [store] url"),
    ),
    p(
        "session_redis_database",
        Un("put the database in [store] url"),
    ),
    p("session_redis_connect_timeout", Un("[store] timeout_ms")),
    p("session_redis_read_timeout", Un("[store] timeout_ms")),
    p("session_redis_send_timeout", Un("[store] timeout_ms")),
    p("session_redis_ssl", Un("use a rediss:// [store] url")),
    p("session_redis_ssl_verify", Un("TLS is always verified")),
    p(
        "session_redis_server_name",
        Un("use a rediss:// [store] url"),
    ),
    p(
        "session_redis_cluster_nodes",
        Un("[store] url (a list) with cluster = true"),
    ),
    p(
        "session_redis_cluster_max_redirections",
        Un("[store] cluster"),
    ),
    p(
        "session_memcached_host",
        Un("memcached is not supported; use [store] (Redis)"),
    ),
    p(
        "session_memcached_port",
        Un("memcached is not supported; use [store] (Redis)"),
    ),
    p(
        "session_memcached_prefix",
        Un("memcached is not supported; use [store] (Redis)"),
    ),
    p(
        "session_memcached_socket",
        Un("memcached is not supported; use [store] (Redis)"),
    ),
    p("session_cookie_path", Na(COOKIE_FIXED)),
    p("session_cookie_domain", Na(COOKIE_FIXED)),
    p("session_cookie_same_site", Na(COOKIE_FIXED)),
    p("session_cookie_http_only", Na(COOKIE_FIXED)),
    p("session_cookie_secure", Na(COOKIE_FIXED)),
    p(
        "session_cookie_maxsize",
        Na("oidc-authz chunks large cookies itself"),
    ),
    p(
        "session_cookie_renew",
        Na("sessions are renewed by oidc-authz's own rules"),
    ),
    p(
        "session_remember",
        Un("persistent (remember-me) sessions are not supported"),
    ),
    p(
        "session_remember_cookie_name",
        Un("persistent sessions are not supported"),
    ),
    p(
        "session_remember_rolling_timeout",
        Un("persistent sessions are not supported"),
    ),
    p(
        "session_remember_absolute_timeout",
        Un("persistent sessions are not supported"),
    ),
    p("session_audience", Un("sessions are per policy")),
    p(
        "session_store_metadata",
        Un("the session index is always kept with [store]"),
    ),
    p(
        "session_enforce_same_subject",
        Un("a new login replaces the session"),
    ),
    p(
        "session_hash_subject",
        Na("session index keys are always hashed"),
    ),
    p(
        "session_hash_storage_key",
        Na("store keys are always hashed"),
    ),
    p(
        "session_request_headers",
        Un("session metadata is not forwarded"),
    ),
    p("session_response_headers", Un(NO_DOWNSTREAM)),
    p("session_strategy", Na("older Kong session setting")),
    p("session_compressor", Na("older Kong session setting")),
    p("session_cookie_samesite", Na(COOKIE_FIXED)),
    p("session_cookie_httponly", Na(COOKIE_FIXED)),
    p("jwt_session_claim", Un("JWT sessions are not supported")),
    p("jwt_session_cookie", Un("JWT sessions are not supported")),
    p(
        "reverify",
        Na("a session's claims are those of its tokens, refreshed on expiry"),
    ),
    // --- caches and Kong's machinery
    p(
        "cache_ttl",
        policy_partly(
            "cache_introspection_secs",
            "applies to introspection answers only (other caches follow token lifetimes)",
        ),
    ),
    p(
        "cache_introspection",
        policy_partly(
            "cache_introspection_secs",
            "false -> cache_introspection_secs = 0",
        ),
    ),
    p("cache_ttl_neg", policy("cache_ttl_neg_secs")),
    p("cache_ttl_max", Na(KONG_CACHE)),
    p("cache_ttl_min", Na(KONG_CACHE)),
    p("cache_ttl_resurrect", Na(KONG_CACHE)),
    p(
        "cache_tokens",
        Na("client-credentials tokens are always cached until they expire"),
    ),
    p("cache_tokens_salt", Na(KONG_CACHE)),
    p("cache_token_exchange", Na(KONG_CACHE)),
    p("cache_user_info", Na(KONG_CACHE)),
    p("token_cache_key_include_scope", Na(KONG_CACHE)),
    p("cluster_cache_strategy", Na(KONG_CACHE)),
    p("cluster_cache_redis", Na(KONG_CACHE)),
    p("ssl_verify", Na(HTTP_CLIENT)),
    p("keepalive", Na(HTTP_CLIENT)),
    p("http_version", Na(HTTP_CLIENT)),
    p("http_proxy", Un(HTTP_CLIENT)),
    p("http_proxy_authorization", Un(HTTP_CLIENT)),
    p("https_proxy", Un(HTTP_CLIENT)),
    p("https_proxy_authorization", Un(HTTP_CLIENT)),
    p("no_proxy", Un(HTTP_CLIENT)),
    p(
        "userinfo_accept",
        Un("oidc-authz does not call the userinfo endpoint for claims"),
    ),
    p("userinfo_headers_names", Un(NO_EXTRA_ARGS)),
    p("userinfo_headers_values", Un(NO_EXTRA_ARGS)),
    p("userinfo_headers_client", Un(NO_EXTRA_ARGS)),
    p("userinfo_query_args_names", Un(NO_EXTRA_ARGS)),
    p("userinfo_query_args_values", Un(NO_EXTRA_ARGS)),
    p("userinfo_query_args_client", Un(NO_EXTRA_ARGS)),
];

/// The table row of a Kong parameter.
pub fn param(kong: &str) -> Option<&'static Param> {
    PARAMS.iter().find(|p| p.kong == kong)
}

/// Kong `auth_methods` values and their oidc-authz names (`None`: not supported; dropping one is stricter).
pub static AUTH_METHODS: &[(&str, Option<&str>)] = &[
    ("bearer", Some("bearer")),
    ("introspection", Some("introspection")),
    ("client_credentials", Some("client_credentials")),
    ("authorization_code", Some("authorization_code")),
    ("session", Some("session")),
    ("userinfo", Some("userinfo")),
    ("password", None),
    ("refresh_token", None),
    ("kong_oauth2", None),
];

/// Plugins that restrict access: one on a route the import covers cannot be dropped silently (exit 65). A plugin in
/// neither this list nor [`NON_RESTRICTING_PLUGINS`] is taken as restricting too (fail closed).
pub static RESTRICTING_PLUGINS: &[&str] = &[
    "acl",
    "ai-prompt-guard",
    "ai-semantic-prompt-guard",
    "basic-auth",
    "bot-detection",
    "header-cert-auth",
    "hmac-auth",
    "injection-protection",
    "ip-restriction",
    "json-threat-protection",
    "jwe-decrypt",
    "jwt",
    "jwt-signer",
    "key-auth",
    "key-auth-enc",
    "konnect-application-auth",
    "ldap-auth",
    "ldap-auth-advanced",
    "mocking",
    "mtls-auth",
    "oas-validation",
    "oauth2",
    "oauth2-introspection",
    "opa",
    "request-size-limiting",
    "request-termination",
    "request-validator",
    "route-by-header",
    "saml",
    "standard-webhooks",
    "vault-auth",
    "websocket-validator",
    "xml-threat-protection",
];

/// Plugins known not to decide who may reach a route (logs, metrics, traces, transformations, caching, CORS, rate
/// limits): not imported, listed as `unmapped`. Every plugin not listed here is taken as restricting.
pub static NON_RESTRICTING_PLUGINS: &[&str] = &[
    "correlation-id",
    "cors",
    "datadog",
    "file-log",
    "grpc-gateway",
    "grpc-web",
    "http-log",
    "kafka-log",
    "loggly",
    "opentelemetry",
    "prometheus",
    "proxy-cache",
    "proxy-cache-advanced",
    "rate-limiting",
    "rate-limiting-advanced",
    "request-transformer",
    "request-transformer-advanced",
    "response-ratelimiting",
    "response-transformer",
    "response-transformer-advanced",
    "session",
    "statsd",
    "statsd-advanced",
    "syslog",
    "tcp-log",
    "udp-log",
    "zipkin",
];

/// How serious a [`Note`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Carried over, with a difference worth knowing.
    Info,
    /// Not carried over, and oidc-authz is as strict as Kong or stricter without it.
    Unmapped,
    /// Something the user must act on (a secret to fill, a session that will not carry over).
    Warning,
    /// Access control would be weaker than Kong's: the import fails (exit 65).
    Error,
}

/// One line of the importer's report (stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// How serious it is.
    pub severity: Severity,
    /// Where: `plugin openid-connect on route api`, `route web`, ...
    pub at: String,
    /// The Kong parameter or entity, when there is one.
    pub param: String,
    /// What happened and why.
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Info => "info",
            Severity::Unmapped => "unmapped",
            Severity::Warning => "warning",
            Severity::Error => "ERROR",
        };
        if self.param.is_empty() {
            write!(f, "{level}: {}: {}", self.at, self.message)
        } else {
            write!(f, "{level}: {}: {}: {}", self.at, self.param, self.message)
        }
    }
}

/// The importer's output.
#[derive(Debug)]
pub struct Import {
    /// The oidc-authz config (TOML).
    pub config_toml: String,
    /// Envoy's route configuration and clusters (YAML).
    pub envoy_yaml: String,
    /// Everything not carried over as is, with the reason.
    pub notes: Vec<Note>,
}

impl Import {
    /// Whether a security-relevant parameter could not be mapped (the CLI exits 65).
    pub fn has_errors(&self) -> bool {
        self.notes.iter().any(|n| n.severity == Severity::Error)
    }
}

/// The input cannot be read as a Kong declarative config at all (the CLI exits 64).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Neither YAML nor JSON.
    #[error("not YAML or JSON: {0}")]
    Parse(String),
    /// Parsed, but not the shape of a decK file.
    #[error("not a Kong declarative config: {0}")]
    Shape(String),
    /// An output could not be serialized (never written empty instead).
    #[error("cannot write the imported {0}")]
    Output(String),
}

/// The TOML text of an output; a failure is an [`ImportError`], never an empty output.
fn to_toml<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, ImportError> {
    toml::to_string(v).map_err(|e| ImportError::Output(format!("oidc-authz.toml: {e}")))
}

/// The YAML text of an output; a failure is an [`ImportError`], never an empty output.
fn to_yaml<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, ImportError> {
    serde_yaml::to_string(v).map_err(|e| ImportError::Output(format!("envoy-routes.yaml: {e}")))
}

/// Imports a decK file (YAML or JSON text). `secret` makes a fresh session secret (base64 of 32 random bytes).
pub fn import_with(text: &str, secret: &mut dyn FnMut() -> String) -> Result<Import, ImportError> {
    let doc = deck::parse(text)?;
    let mut notes = Vec::new();
    let deck = deck::Deck::read(&doc, &mut notes)?;
    let out = convert::convert(&deck, secret, &mut notes)?;
    let envoy_yaml = envoy::render(&deck, &out.route_policies, &mut notes)?;
    notes.sort_by_key(|n| std::cmp::Reverse(n.severity));
    Ok(Import {
        config_toml: out.toml,
        envoy_yaml,
        notes,
    })
}

/// Imports a decK file with fresh random session secrets.
pub fn import(text: &str) -> Result<Import, ImportError> {
    use base64::Engine;
    use rand::RngCore;
    import_with(text, &mut || {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        base64::engine::general_purpose::STANDARD.encode(key)
    })
}

#[cfg(test)]
mod tests;
