//! Turns the `openid-connect` plugins of a [`Deck`] into oidc-authz providers, policies and `[[routes]]` (TOML).

use serde_json::{Map, Value};
use toml::Table;

use super::deck::Deck;
use super::{AUTH_METHODS, ImportError, Mapping, Note, Severity, is_set, param};

/// The converted config and, per route of the deck, the policy it got.
pub(super) struct Converted {
    /// The oidc-authz config, TOML.
    pub(super) toml: String,
    /// Per [`Deck::routes`] entry: the policy name, `None` for a route without the plugin.
    pub(super) route_policies: Vec<Option<String>>,
}

/// The methods Kong allows when `auth_methods` is not given, among those oidc-authz has (`userinfo` left out).
const DEFAULT_METHODS: &[&str] = &[
    "bearer",
    "introspection",
    "client_credentials",
    "authorization_code",
    "session",
];

/// A Kong vault reference (`{vault://env/okta-secret}`).
fn is_vault_ref(s: &str) -> bool {
    s.trim_start().starts_with("{vault://")
}

/// Letters, digits, `_` and `-`; anything else becomes `_`.
pub(super) fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "kong".into() } else { s }
}

/// `name`, or `name_2`, `name_3`, ... whichever is not taken yet.
fn unique(name: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == name) {
        return name.to_string();
    }
    (2..)
        .map(|i| format!("{name}_{i}"))
        .find(|n| !taken.iter().any(|t| t == n))
        .unwrap_or_default()
}

/// One plugin's config, read key by key; records every key it maps so the rest can be reported.
struct Reader<'a> {
    cfg: &'a Map<String, Value>,
    at: &'a str,
    notes: &'a mut Vec<Note>,
}

impl Reader<'_> {
    fn note(&mut self, severity: Severity, param: &str, message: impl Into<String>) {
        self.notes.push(Note {
            severity,
            at: self.at.to_string(),
            param: param.to_string(),
            message: message.into(),
        });
    }

    /// The value, unless absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.cfg.get(key).filter(|v| !v.is_null())
    }

    /// A string, or the first of a list (Kong lists several clients and URIs; the rest is noted).
    fn first(&mut self, key: &str) -> Option<String> {
        match self.get(key)?.clone() {
            Value::String(s) => Some(s),
            Value::Array(a) => {
                if a.len() > 1 {
                    self.note(
                        Severity::Warning,
                        key,
                        format!("{} values: only the first is imported", a.len()),
                    );
                }
                a.first().and_then(Value::as_str).map(str::to_string)
            }
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn strings(&self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            Value::Array(a) => Some(
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            Value::String(s) => Some(vec![s.clone()]),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.round() as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }
}

fn strs(v: &[String]) -> toml::Value {
    toml::Value::Array(v.iter().map(|s| toml::Value::String(s.clone())).collect())
}

/// One plugin converted: its provider, its policy (without `provider`), and a Redis URL for `[store]`.
struct Plugged {
    provider: Table,
    policy: Table,
    store_url: Option<String>,
    /// Kong's session secret (or `""`), when the policy logs users in: policies sharing one share the new one.
    session_secret: Option<String>,
}

/// Converts one plugin config. `plain_paths` are the plain paths of the routes it covers (for logout_uri_suffix).
fn plugin(
    cfg: &Map<String, Value>,
    at: &str,
    plain_paths: &[String],
    notes: &mut Vec<Note>,
) -> Plugged {
    let mut r = Reader { cfg, at, notes };
    let mut prov = Table::new();
    let mut pol = Table::new();

    // every key the table does not map: reported, and an error when dropping it weakens access control
    let mut keys: Vec<&String> = cfg.keys().collect();
    keys.sort();
    for key in keys {
        let v = &cfg[key];
        match param(key) {
            None => {
                if is_set(v) {
                    r.note(
                        Severity::Error,
                        key,
                        "not in the importer's table: check it by hand (it might restrict access)",
                    );
                }
            }
            Some(p) => match p.mapping {
                Mapping::Mapped { .. } => {}
                Mapping::Unsupported(why) | Mapping::NotApplicable(why) => {
                    if p.risk.weakens(v) {
                        r.note(
                            Severity::Error,
                            key,
                            format!("{why}; without it requests Kong refuses would pass"),
                        );
                    } else if is_set(v) {
                        let kind = if matches!(p.mapping, Mapping::Unsupported(_)) {
                            "not supported"
                        } else {
                            "not applicable"
                        };
                        r.note(Severity::Unmapped, key, format!("{kind}: {why}"));
                    }
                }
            },
        }
    }

    // ---- provider
    match r.first("issuer") {
        Some(i) => {
            let i = i
                .strip_suffix("/.well-known/openid-configuration")
                .map(str::to_string)
                .unwrap_or(i);
            prov.insert("issuer".into(), i.into());
        }
        None => r.note(
            Severity::Error,
            "issuer",
            "missing: the plugin has no provider",
        ),
    }
    if let Some(v) = r.first("client_id") {
        prov.insert("client_id".into(), v.into());
    }
    if let Some(s) = r.first("client_secret") {
        if is_vault_ref(&s) {
            prov.insert("client_secret_file".into(), "FILL-ME".into());
            r.note(
                Severity::Warning,
                "client_secret",
                "a Kong vault reference: the provider reads client_secret_file instead; put the secret in a file and set its path (or OIDC_AUTHZ_PROVIDERS__<NAME>__CLIENT_SECRET)",
            );
        } else {
            prov.insert("client_secret".into(), s.into());
            r.note(
                Severity::Warning,
                "client_secret",
                "copied in clear into the output as given; prefer client_secret_file or OIDC_AUTHZ_PROVIDERS__<NAME>__CLIENT_SECRET",
            );
        }
    }
    match r.first("client_auth") {
        Some(v) => {
            prov.insert("client_auth".into(), v.into());
        }
        None => {
            if let Some(v) = r.first("token_endpoint_auth_method") {
                prov.insert("client_auth".into(), v.into());
            }
        }
    }
    match r.get("client_jwk").cloned() {
        Some(Value::String(s)) if is_vault_ref(&s) => {
            prov.insert("client_jwk_file".into(), "FILL-ME".into());
            r.note(
                Severity::Warning,
                "client_jwk",
                "a Kong vault reference: the provider reads client_jwk_file instead; put the JWK in a file and set its path",
            );
        }
        Some(v) => {
            let jwk = match v {
                Value::Array(a) => a.into_iter().next(),
                other => Some(other),
            };
            if let Some(jwk) = jwk.and_then(|j| toml::Value::try_from(j).ok()) {
                prov.insert("client_jwk".into(), jwk);
            }
        }
        None => {}
    }
    if let Some(v) = r.first("client_alg") {
        prov.insert("client_alg".into(), v.into());
    }
    for (kong, ours) in [
        ("token_endpoint", "token_endpoint"),
        ("introspection_endpoint", "introspection_endpoint"),
        ("authorization_endpoint", "authorization_endpoint"),
        ("end_session_endpoint", "end_session_endpoint"),
    ] {
        if let Some(v) = r.first(kong) {
            prov.insert(ours.into(), v.into());
        }
    }
    for (kong, ours) in [
        ("leeway", "leeway_secs"),
        ("timeout", "http_timeout_ms"),
        ("rediscovery_lifetime", "jwks_min_refetch_secs"),
    ] {
        if let Some(v) = r.int(kong).filter(|v| *v >= 0) {
            prov.insert(ours.into(), v.into());
        }
    }

    // ---- policy: methods
    let mut methods: Vec<String> = Vec::new();
    match r.strings("auth_methods") {
        Some(kong) => {
            for m in kong {
                match AUTH_METHODS.iter().find(|(k, _)| *k == m) {
                    Some((_, Some(ours))) => methods.push((*ours).to_string()),
                    Some((_, None)) => r.note(
                        Severity::Unmapped,
                        "auth_methods",
                        format!("`{m}` is not supported: dropped (those requests are refused)"),
                    ),
                    None => r.note(
                        Severity::Unmapped,
                        "auth_methods",
                        format!("unknown method `{m}`: dropped"),
                    ),
                }
            }
        }
        None => {
            methods = DEFAULT_METHODS.iter().map(|m| m.to_string()).collect();
            r.note(
                Severity::Info,
                "auth_methods",
                "not given: Kong allows every method; imported as bearer, introspection, client_credentials, authorization_code, session",
            );
        }
    }
    let redirect_uri = r.first("redirect_uri");
    let wants_login = methods
        .iter()
        .any(|m| m == "authorization_code" || m == "session");
    if wants_login && redirect_uri.is_none() {
        methods.retain(|m| m != "authorization_code" && m != "session");
        r.note(
            Severity::Unmapped,
            "redirect_uri",
            "not given (Kong uses the request URL): authorization_code and session dropped; set redirect_uri to import the login",
        );
    }
    if methods.is_empty() {
        r.note(
            Severity::Error,
            "auth_methods",
            "no method oidc-authz supports is left",
        );
    }
    let login = methods
        .iter()
        .any(|m| m == "authorization_code" || m == "session");
    let takes_tokens = methods
        .iter()
        .any(|m| m == "bearer" || m == "introspection");
    pol.insert("auth_methods".into(), strs(&methods));

    // ---- policy: access rules
    for key in [
        "scopes",
        "scopes_claim",
        "scopes_required",
        "audience_claim",
        "audience_required",
        "groups_claim",
        "groups_required",
        "roles_claim",
        "roles_required",
        "claims_forbidden",
        "upstream_headers_claims",
        "upstream_headers_names",
        "bearer_token_param_type",
        "logout_methods",
    ] {
        if let Some(v) = r.strings(key) {
            pol.insert(key.into(), strs(&v));
        }
    }
    if takes_tokens {
        pol.insert("allow_any_audience".into(), true.into());
        r.note(
            Severity::Warning,
            "audience_required",
            "Kong checks a token's `aud` only through audience_required: the policy says allow_any_audience = true to keep that; list the accepted audiences in the provider's `audiences` (and drop allow_any_audience) to have every token's `aud` checked",
        );
    }
    // Kong: several values are a path into nested objects, as oidc-authz's claim paths are
    if let Some(c) = r.strings("consumer_claim").filter(|c| !c.is_empty()) {
        pol.insert("consumer_claim".into(), strs(&c));
        if r.bool("consumer_optional") != Some(true) {
            r.note(
                Severity::Error,
                "consumer_optional",
                "Kong refuses a token whose consumer_claim names no registered consumer; oidc-authz has no consumer registry (set consumer_optional = true in Kong to import)",
            );
        }
    }

    // ---- policy: what goes upstream, answers, credentials
    match cfg.get("upstream_access_token_header") {
        Some(Value::Null) if login => {
            pol.insert("upstream_access_token".into(), false.into());
        }
        Some(Value::String(h)) if !h.eq_ignore_ascii_case("authorization:bearer") => {
            pol.insert("upstream_access_token_header".into(), h.clone().into());
        }
        _ => {}
    }
    for key in [
        "upstream_id_token_header",
        "upstream_introspection_header",
        "upstream_user_info_header",
        "unauthorized_error_message",
        "forbidden_error_message",
        "bearer_token_cookie_name",
        "client_arg",
        "session_cookie_name",
    ] {
        if let Some(v) = r.first(key) {
            pol.insert(key.into(), v.into());
        }
    }
    if let Some(u) = &redirect_uri {
        pol.insert("redirect_uri".into(), u.clone().into());
    }
    for key in ["display_errors", "introspect_jwt_tokens"] {
        if let Some(v) = r.bool(key) {
            pol.insert(key.into(), v.into());
        }
    }
    if let Some(types) = r.strings("client_credentials_param_type") {
        let mut ours = Vec::new();
        for t in types {
            match t.as_str() {
                "header" => ours.extend(["basic".to_string(), "header".to_string()]),
                other => r.note(
                    Severity::Unmapped,
                    "client_credentials_param_type",
                    format!("`{other}` is not supported: client credentials there are refused"),
                ),
            }
        }
        if !ours.is_empty() {
            pol.insert("client_credentials_param_type".into(), strs(&ours));
        }
    }

    // ---- policy: caches
    if let Some(v) = r.int("cache_ttl").filter(|v| *v >= 0) {
        pol.insert("cache_introspection_secs".into(), v.into());
    }
    if r.bool("cache_introspection") == Some(false) {
        pol.insert("cache_introspection_secs".into(), 0.into());
    }
    if let Some(v) = r.int("cache_ttl_neg").filter(|v| *v >= 0) {
        pol.insert("cache_ttl_neg_secs".into(), v.into());
    }

    // ---- policy: logout
    if let Some(suffix) = r.first("logout_uri_suffix") {
        let mut distinct: Vec<&String> = plain_paths.iter().collect();
        distinct.dedup();
        if let [only] = distinct.as_slice() {
            let path = format!(
                "{}/{}",
                only.trim_end_matches('/'),
                suffix.trim_start_matches('/')
            );
            pol.insert("logout_path".into(), path.into());
        } else {
            r.note(
                Severity::Unmapped,
                "logout_uri_suffix",
                "the plugin covers other than exactly one plain route path: no logout_path imported; set it by hand",
            );
        }
    }
    let revoke_parts = [
        r.bool("logout_revoke_access_token"),
        r.bool("logout_revoke_refresh_token"),
    ];
    match r.bool("logout_revoke") {
        Some(true) if revoke_parts.contains(&Some(false)) => {
            pol.insert("logout_revoke".into(), true.into());
            r.note(
                Severity::Info,
                "logout_revoke_access_token",
                "oidc-authz revokes the refresh and the access token together",
            );
        }
        Some(v) => {
            pol.insert("logout_revoke".into(), v.into());
        }
        None => {}
    }
    if let Some(v) = r.first("logout_redirect_uri") {
        pol.insert("post_logout_redirect_uri".into(), v.into());
    }

    // ---- policy: session
    for (keys, ours) in [
        (
            ["session_idling_timeout", "session_cookie_idletime"],
            "session_idle_timeout_secs",
        ),
        (
            ["session_absolute_timeout", "session_cookie_lifetime"],
            "session_absolute_timeout_secs",
        ),
    ] {
        let Some((key, v)) = keys.iter().find_map(|k| r.int(k).map(|v| (*k, v))) else {
            continue;
        };
        if v > 0 {
            pol.insert(ours.into(), v.into());
        } else if login {
            r.note(
                Severity::Info,
                key,
                format!("0 (no limit in Kong): oidc-authz's default {ours} applies"),
            );
        }
    }
    let mut store_url = None;
    match r.first("session_storage").as_deref() {
        Some("cookie") => {
            pol.insert("session_storage".into(), "cookie".into());
        }
        Some("redis") => {
            pol.insert("session_storage".into(), "store".into());
            let host = r
                .first("session_redis_host")
                .unwrap_or_else(|| "127.0.0.1".into());
            let port = r.int("session_redis_port").unwrap_or(6379);
            store_url = Some(format!("redis://{host}:{port}/"));
            r.note(
                Severity::Warning,
                "session_storage",
                "redis: sessions live in [store] (backend redis); give [store] its secret (store.secret_file)",
            );
        }
        Some(other) => r.note(
            Severity::Unmapped,
            "session_storage",
            format!("`{other}` is not supported: sessions stay in cookies"),
        ),
        None => {}
    }
    let session_secret = login.then(|| r.first("session_secret").unwrap_or_default());
    if login {
        r.note(
            Severity::Warning,
            "session_secret",
            "Kong's session secret is not oidc-authz's key format: a fresh random session_secret is written; Kong's sessions do not carry over (users log in again)",
        );
    }
    if !login {
        // login-only keys mean nothing to oidc-authz on a policy without a login
        for key in [
            "redirect_uri",
            "session_cookie_name",
            "session_idle_timeout_secs",
            "session_absolute_timeout_secs",
            "session_storage",
            "logout_path",
            "logout_methods",
            "logout_revoke",
            "post_logout_redirect_uri",
            "upstream_access_token",
            "upstream_id_token_header",
        ] {
            pol.remove(key);
        }
        store_url = None;
    }
    Plugged {
        provider: prov,
        policy: pol,
        store_url,
        session_secret,
    }
}

/// The provider's name: `okta` for an Okta issuer, else the issuer host's first label (`idp` for an address).
fn provider_name(provider: &Table) -> String {
    let host = provider
        .get("issuer")
        .and_then(toml::Value::as_str)
        .and_then(|i| url::Url::parse(i).ok())
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    if host.contains("okta") {
        return "okta".into();
    }
    match host.split('.').next() {
        Some(label) if label.starts_with(|c: char| c.is_ascii_alphabetic()) => sanitize(label),
        _ => "idp".into(),
    }
}

/// The plain (non-regex) paths of the routes a plugin covers.
fn plain_paths(deck: &Deck, plugin: usize) -> Vec<String> {
    let mut out: Vec<String> = deck
        .routes
        .iter()
        .filter(|r| r.plugin == Some(plugin))
        .flat_map(|r| {
            if r.paths.is_empty() {
                vec!["/".to_string()]
            } else {
                r.paths.clone()
            }
        })
        .filter(|p| !p.starts_with('~'))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Converts every plugin of the deck and writes the config.
pub(super) fn convert(
    deck: &Deck,
    secret: &mut dyn FnMut() -> String,
    notes: &mut Vec<Note>,
) -> Result<Converted, ImportError> {
    let mut providers: Vec<(String, Table)> = Vec::new();
    let mut policies: Vec<(String, Table)> = Vec::new();
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut store_url: Option<String> = None;
    let mut plugin_policy: Vec<String> = Vec::new();
    for (i, plug) in deck.plugins.iter().enumerate() {
        let mut c = plugin(&plug.config, &plug.at, &plain_paths(deck, i), notes);
        let provider = match providers.iter().find(|(_, t)| *t == c.provider) {
            Some((n, _)) => n.clone(),
            None => {
                let taken: Vec<String> = providers.iter().map(|(n, _)| n.clone()).collect();
                let n = unique(&provider_name(&c.provider), &taken);
                providers.push((n.clone(), c.provider.clone()));
                n
            }
        };
        c.policy.insert("provider".into(), provider.into());
        if let Some(kong_secret) = c.session_secret {
            let ours = match secrets.iter().find(|(k, _)| *k == kong_secret) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = secret();
                    secrets.push((kong_secret, s.clone()));
                    s
                }
            };
            c.policy.insert("session_secret".into(), ours.into());
        }
        if let Some(u) = c.store_url {
            if store_url.as_ref().is_some_and(|s| *s != u) {
                notes.push(Note {
                    severity: Severity::Warning,
                    at: plug.at.clone(),
                    param: "session_redis_host".into(),
                    message: "another plugin uses another Redis: oidc-authz has one [store]; the first is kept".into(),
                });
            } else {
                store_url = Some(u);
            }
        }
        let name = match policies.iter().find(|(_, t)| *t == c.policy) {
            Some((n, _)) => n.clone(),
            None => {
                let taken: Vec<String> = policies.iter().map(|(n, _)| n.clone()).collect();
                let n = unique(&sanitize(&plug.name), &taken);
                policies.push((n.clone(), c.policy));
                n
            }
        };
        plugin_policy.push(name);
    }

    let mut root = Table::new();
    if let Some(url) = store_url {
        let mut store = Table::new();
        store.insert("backend".into(), "redis".into());
        store.insert("url".into(), url.into());
        store.insert("secret_file".into(), "FILL-ME".into());
        root.insert("store".into(), toml::Value::Table(store));
    }
    root.insert(
        "providers".into(),
        toml::Value::Table(providers.into_iter().map(|(n, t)| (n, t.into())).collect()),
    );
    root.insert(
        "policies".into(),
        toml::Value::Table(policies.into_iter().map(|(n, t)| (n, t.into())).collect()),
    );
    let mut routes = Vec::new();
    let mut route_policies = Vec::new();
    for r in &deck.routes {
        let policy = r.plugin.map(|i| plugin_policy[i].clone());
        route_policies.push(policy.clone());
        let Some(policy) = policy else {
            notes.push(Note {
                severity: Severity::Info,
                at: format!("route {}", r.name),
                param: String::new(),
                message: "no openid-connect plugin: public through the Envoy routes (ext_authz disabled); no [[routes]] entry, so a Check without a policy for it is denied 403".into(),
            });
            continue;
        };
        let paths = if r.paths.is_empty() {
            vec!["/".to_string()]
        } else {
            r.paths.clone()
        };
        for path in paths {
            let mut t = Table::new();
            if !r.hosts.is_empty() {
                t.insert("hosts".into(), strs(&r.hosts));
            }
            match path.strip_prefix('~') {
                Some(re) => {
                    t.insert("path_regex".into(), full_match_regex(re).into());
                }
                None => {
                    t.insert("path_prefix".into(), path.into());
                }
            }
            if !r.methods.is_empty() {
                t.insert("methods".into(), strs(&r.methods));
            }
            t.insert("policy".into(), policy.clone().into());
            routes.push(toml::Value::Table(t));
        }
    }
    if !routes.is_empty() {
        root.insert("routes".into(), toml::Value::Array(routes));
    }
    let body = super::to_toml(&root)?;
    Ok(Converted {
        toml: format!(
            "# oidc-authz config imported from a Kong declarative config by `oidc-authz import-kong`.\n\
             # Read the importer's report (stderr) before using it; `FILL-ME` marks a path to fill in.\n\
             # Session secrets are fresh random keys: Kong's sessions do not carry over.\n\n{body}"
        ),
        route_policies,
    })
}

/// Kong matches a regex path from the start of the path (a prefix); oidc-authz's `path_regex` and Envoy's
/// `safe_regex` match the whole path: allow any rest unless the regex ends with `$`.
pub(super) fn full_match_regex(re: &str) -> String {
    let re = re.strip_prefix('^').unwrap_or(re);
    if re.ends_with('$') && !re.ends_with("\\$") {
        format!("(?:{})", &re[..re.len() - 1])
    } else {
        format!("(?:{re}).*")
    }
}
