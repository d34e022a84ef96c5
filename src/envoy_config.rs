//! `oidc-authz envoy-config`: the Envoy side of a config (the ext_authz filter sending only the headers the policies
//! read, per-route snippets, and with `--offload-bearer` jwt_authn + RBAC for the bearer-only policies Envoy can
//! express).

use serde_json::{Value, json};

use crate::config::{Config, Policy};

/// When a header that the code reads by name is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Every config: the credential of every token flow.
    Always,
    /// Only when some policy has a browser login (sessions, 302 versus 401, logout checks).
    Login,
    /// Only when some route sends its body (the body's media type).
    Body,
    /// Never in `allowed_headers`: Envoy fills the CheckRequest's own attribute (`host`, `method`, `path`) whatever
    /// the list says; the code reads the header only as a fallback.
    Attribute,
}

/// Every request header the code reads by a fixed name from a CheckRequest (`CheckView::header`,
/// `header_values`, `has_header`), and when Envoy must send it. The test `every_header_read_is_listed` scans
/// `src/` and fails when a read of a name missing here is added; names the config chooses (client-credential
/// headers, the headers a policy controls) come from the policies in [`allowed_headers`].
pub const READ_HEADERS: &[(&str, Need)] = &[
    ("authorization", Need::Always),
    ("cookie", Need::Login),
    // a browser navigation (Accept: text/html, no X-Requested-With) is redirected to log in; an API call gets 401
    ("accept", Need::Login),
    ("x-requested-with", Need::Login),
    // logout refuses other sites
    ("origin", Need::Login),
    ("sec-fetch-site", Need::Login),
    ("content-type", Need::Body),
    // a token in a form body: refused when the body was cut, compressed or not sent whole
    ("content-length", Need::Body),
    ("content-encoding", Need::Body),
    ("x-envoy-auth-partial-body", Need::Body),
    ("host", Need::Attribute),
    (":authority", Need::Attribute),
    (":method", Need::Attribute),
    (":path", Need::Attribute),
];

/// Which requests of a policy Envoy must send with their body (`with_request_body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyNeed {
    /// None: the headers decide.
    Nothing,
    /// Only requests to these exact paths (a back-channel logout path).
    Paths(Vec<String>),
    /// Every request of the policy (e.g. a token that may come in a form body).
    Every,
}

/// The one place that decides whether a policy needs request bodies: a policy that reads its bearer token from a
/// form body (`bearer_token_param_type` with `body`) needs every request's; otherwise only the back-channel logout
/// path, which reads the provider's `logout_token` from a form body.
pub fn needs_body(policy: &Policy) -> BodyNeed {
    if policy.bearer_token_places.body {
        return BodyNeed::Every;
    }
    let paths: Vec<String> = policy
        .login
        .iter()
        .filter_map(|l| l.backchannel_logout_path.clone())
        .collect();
    if paths.is_empty() {
        BodyNeed::Nothing
    } else {
        BodyNeed::Paths(paths)
    }
}

/// One entry of the ext_authz filter's `allowed_headers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum HeaderPattern {
    /// The lower-case name exactly.
    Exact(String),
    /// A header the policy controls: every spelling with `_` or `-` at each `-`/`_`, so oidc-authz sees (and
    /// removes) a client's `x_user` where Envoy does not reject underscores.
    Spellings(String),
}

impl HeaderPattern {
    /// The Envoy `StringMatcher`.
    fn matcher(&self) -> Value {
        match self {
            HeaderPattern::Exact(n) => json!({ "exact": n }),
            HeaderPattern::Spellings(n) => {
                let re = n
                    .split(['-', '_'])
                    .map(regex::escape)
                    .collect::<Vec<_>>()
                    .join("[-_]");
                json!({ "safe_regex": { "regex": re } })
            }
        }
    }
}

/// The headers Envoy must send for this config: the fixed reads the config needs, each policy's
/// client-credential headers, and every header a policy controls (so a client-sent copy is seen and removed).
pub fn allowed_headers(cfg: &Config) -> Vec<HeaderPattern> {
    let login = cfg.policies.iter().any(|p| p.login.is_some());
    let body = cfg
        .policies
        .iter()
        .any(|p| needs_body(p) != BodyNeed::Nothing);
    let mut exact: Vec<String> = READ_HEADERS
        .iter()
        .filter(|(_, need)| match need {
            Need::Always => true,
            Need::Login => login,
            Need::Body => body,
            Need::Attribute => false,
        })
        .map(|(n, _)| n.to_string())
        .collect();
    let mut spellings: Vec<String> = Vec::new();
    for p in cfg.policies.iter() {
        if p.bearer_token_places.cookie.is_some() {
            exact.push("cookie".to_string());
        }
        if let Some((id, secret)) = &p.client_credential_headers {
            exact.push(id.as_str().to_string());
            exact.push(secret.as_str().to_string());
        }
        for h in &p.controlled_headers {
            spellings.push(h.as_str().to_string());
        }
    }
    let mut out: Vec<HeaderPattern> = Vec::new();
    for n in exact {
        let p = HeaderPattern::Exact(n);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    for n in spellings {
        let known = out.iter().any(|p| match p {
            HeaderPattern::Exact(e) => *e == n,
            HeaderPattern::Spellings(s) => *s == n,
        });
        let spelled = n.contains(['-', '_']);
        if known && !spelled {
            continue;
        }
        let p = if spelled {
            HeaderPattern::Spellings(n)
        } else {
            HeaderPattern::Exact(n)
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Options of `oidc-authz envoy-config`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Envoy's cluster of the oidc-authz replicas.
    pub cluster: String,
    /// ext_authz's gRPC timeout in milliseconds.
    pub timeout_ms: u64,
    /// The largest body Envoy buffers for a route that sends it.
    pub max_request_bytes: u32,
    /// Emit jwt_authn + RBAC for the bearer-only policies Envoy can express.
    pub offload_bearer: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster: "oidc_authz".into(),
            timeout_ms: 1000,
            max_request_bytes: 16384,
            offload_bearer: false,
        }
    }
}

/// What `envoy-config` prints: the document and the notes (what was not offloaded, and why).
#[derive(Debug, Clone)]
pub struct Generated {
    /// `http_filters`, `per_route` (typed_per_filter_config by policy), `routes` (the paths a policy answers
    /// itself that need settings of their own) and, when offloading, `clusters` for the JWKS.
    pub doc: Value,
    /// Human-readable notes: each policy that stays on ext_authz under `--offload-bearer`, with the reason.
    pub notes: Vec<String>,
}

/// The ext_authz filter's name in `http_filters` and `typed_per_filter_config` (envoy-config, the offload and
/// import-kong write the same).
pub const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
/// The ext_authz filter's config type.
pub const EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
/// The ext_authz per-route config type (`check_settings`, `disabled`).
pub const EXT_AUTHZ_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

/// The ext_authz `http_filters` entry: gRPC to `opts.cluster`, fail closed, only the allowed headers.
pub fn ext_authz_filter(cfg: &Config, opts: &Options) -> Value {
    let patterns: Vec<Value> = allowed_headers(cfg)
        .iter()
        .map(HeaderPattern::matcher)
        .collect();
    json!({
        "name": EXT_AUTHZ,
        "typed_config": {
            "@type": EXT_AUTHZ_TYPE,
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": opts.cluster },
                "timeout": duration(opts.timeout_ms),
                // A replica that dies or refuses costs no request: the Check goes to another one (never the host that
                // failed it while another is left), as in the shipped envoy/*.yaml. max_interval is also Envoy's
                // per-try timeout here, so it stays the Check's timeout.
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,reset,unavailable,cancelled",
                    "num_retries": 3,
                    "retry_back_off": { "base_interval": "0.1s", "max_interval": duration(opts.timeout_ms) },
                    "retry_host_predicate": [{
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        }
                    }],
                    "host_selection_retry_max_attempts": 5,
                },
            },
            "failure_mode_allow": false,
            "status_on_error": { "code": "ServiceUnavailable" },
            "allowed_headers": { "patterns": patterns },
            "encode_raw_headers": true,
            "include_peer_certificate": false,
        }
    })
}

/// A protobuf JSON duration of `ms` milliseconds (`1s`, `0.25s`).
fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", ms as f64 / 1000.0)
    }
}

/// The `typed_per_filter_config` of a route served by `policy` through ext_authz.
pub fn ext_authz_per_route(policy: &Policy, with_body: Option<u32>) -> Value {
    let mut check = json!({ "context_extensions": { "policy": policy.name } });
    if let Some(max) = with_body {
        check["with_request_body"] = json!({ "max_request_bytes": max, "allow_partial_message": false, "pack_as_bytes": true });
    }
    json!({ EXT_AUTHZ: { "@type": EXT_AUTHZ_PER_ROUTE, "check_settings": check } })
}

/// The whole output for a config.
pub fn generate(cfg: &Config, opts: &Options) -> Generated {
    let mut per_route = serde_json::Map::new();
    let mut routes: Vec<Value> = Vec::new();
    let mut notes = Vec::new();
    let mut filters = Vec::new();
    let offload = if opts.offload_bearer {
        crate::envoy_offload::plan(cfg, &mut notes)
    } else {
        crate::envoy_offload::Plan::default()
    };
    filters.extend(offload.filters.iter().cloned());
    filters.push(ext_authz_filter(cfg, opts));
    for p in cfg.policies.iter() {
        if let Some(route) = offload.per_route.get(&p.name) {
            per_route.insert(p.name.clone(), route.clone());
            continue;
        }
        let every = needs_body(p) == BodyNeed::Every;
        per_route.insert(
            p.name.clone(),
            ext_authz_per_route(p, every.then_some(opts.max_request_bytes)),
        );
        if let BodyNeed::Paths(paths) = needs_body(p) {
            for path in paths {
                routes.push(json!({
                    "name": format!("{}-body", p.name),
                    "match": { "path": path },
                    "typed_per_filter_config": ext_authz_per_route(p, Some(opts.max_request_bytes)),
                }));
            }
        }
    }
    let mut doc = json!({
        "http_filters": filters,
        "per_route": per_route,
        "routes": routes,
    });
    if !offload.clusters.is_empty() {
        doc["clusters"] = Value::Array(offload.clusters);
    }
    Generated { doc, notes }
}

/// Block-style YAML of a JSON value (strings double-quoted the JSON way, which YAML reads the same).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_value(v, 0, &mut out);
    out
}

/// Whether YAML may read `c` as a line break or refuses it unescaped: control characters (C0, DEL, C1 with NEL),
/// the Unicode line and paragraph separators, and the byte-order mark.
pub(crate) fn unsafe_in_yaml(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// `text` made safe for one YAML comment line (after `# `): every character YAML could take as a line break, or
/// refuses, is written as a `\u{..}` escape, so no config value can end the comment and start YAML of its own.
pub fn comment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if unsafe_in_yaml(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A double-quoted YAML scalar: JSON's quoting (which YAML reads the same) with the characters JSON leaves raw but
/// YAML does not take (DEL, C1, the line and paragraph separators, the BOM) as `\uXXXX` escapes.
fn quoted(s: &str) -> String {
    let json = Value::String(s.to_string()).to_string();
    if !json.chars().any(unsafe_in_yaml) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if unsafe_in_yaml(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn yaml_key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !k.starts_with('-');
    if plain { k.to_string() } else { quoted(k) }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) if m.is_empty() => Some("{}".into()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(_) | Value::Array(_) => None,
        Value::String(s) => Some(quoted(s)),
        other => Some(other.to_string()),
    }
}

fn yaml_value(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{pad}{}: {s}\n", yaml_key(k))),
                    None => {
                        out.push_str(&format!("{pad}{}:\n", yaml_key(k)));
                        let inner = if v.is_array() { indent } else { indent + 2 };
                        yaml_value(v, inner, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        // The first line of the item goes after "- ", the rest indented under it.
                        let mut inner = String::new();
                        yaml_value(item, indent + 2, &mut inner);
                        let body = inner.trim_start();
                        out.push_str(&format!("{pad}- {body}"));
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                out.push_str(&format!("{pad}{s}\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[providers.okta]
issuer = "https://idp.example.com/oauth2/default"
jwks_uri = "https://idp.example.com/oauth2/default/v1/keys"
client_id = "c"
client_secret = "s"
audiences = ["api://default"]
"#;

    fn cfg(policies: &str) -> Config {
        Config::from_toml(&format!("{BASE}{policies}")).expect("valid config")
    }

    fn patterns(doc: &Value) -> Vec<Value> {
        let f = doc["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == EXT_AUTHZ)
            .unwrap();
        f["typed_config"]["allowed_headers"]["patterns"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn exact(doc: &Value) -> Vec<String> {
        patterns(doc)
            .iter()
            .filter_map(|p| p["exact"].as_str().map(str::to_string))
            .collect()
    }

    fn regexes(doc: &Value) -> Vec<String> {
        patterns(doc)
            .iter()
            .filter_map(|p| p["safe_regex"]["regex"].as_str().map(str::to_string))
            .collect()
    }

    const BEARER: &str = r#"
[policies.api]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:read"]
upstream_headers_claims = ["sub"]
upstream_headers_names = ["x-user"]
"#;

    const LOGIN: &str = r#"
[policies.web]
provider = "okta"
auth_methods = ["authorization_code", "session"]
redirect_uri = "https://app.example.com/oauth2/callback"
session_secret = "UePTBxfdBegqNEpqNNov35u26T1aGX35JU71DtqTevA="
logout_path = "/oauth2/logout"
backchannel_logout_path = "/oauth2/backchannel-logout"
"#;

    #[test]
    fn no_value_ends_a_comment_or_a_yaml_string() {
        let hostile = "api\nhttp_filters: []\r\u{85}x\u{2028}y\u{2029}z\u{7f}\u{feff}";
        let c = comment(hostile);
        assert!(!c.chars().any(unsafe_in_yaml), "{c:?}");
        assert!(c.starts_with("api\\u{a}http_filters"), "{c:?}");
        let doc = json!({ hostile: [hostile, { "k": hostile }] });
        let yaml = to_yaml(&doc);
        assert!(
            !yaml.chars().any(|c| c != '\n' && unsafe_in_yaml(c)),
            "{yaml:?}"
        );
        assert_eq!(yaml.lines().count(), 3, "{yaml}");
        let back: Value = serde_yaml::from_str(&yaml).expect("valid YAML");
        assert_eq!(back, doc);
    }

    #[test]
    fn bearer_only_sends_authorization_and_the_controlled_headers() {
        let g = generate(&cfg(BEARER), &Options::default());
        assert_eq!(exact(&g.doc), vec!["authorization"]);
        assert_eq!(regexes(&g.doc), vec!["x[-_]user"]);
        let f = &g.doc["http_filters"][0]["typed_config"];
        assert_eq!(f["@type"], EXT_AUTHZ_TYPE);
        assert_eq!(f["transport_api_version"], "V3");
        assert_eq!(f["failure_mode_allow"], false);
        assert_eq!(f["include_peer_certificate"], false);
        assert_eq!(
            f["grpc_service"]["envoy_grpc"]["cluster_name"],
            "oidc_authz"
        );
        assert_eq!(f["grpc_service"]["timeout"], "1s");
        let retry = &f["grpc_service"]["retry_policy"];
        assert_eq!(retry["num_retries"], 3);
        assert_eq!(retry["retry_back_off"]["max_interval"], "1s");
        assert_eq!(
            retry["retry_host_predicate"][0]["name"],
            "envoy.retry_host_predicates.previous_hosts"
        );
        let api = &g.doc["per_route"]["api"][EXT_AUTHZ];
        assert_eq!(api["@type"], EXT_AUTHZ_PER_ROUTE);
        assert_eq!(api["check_settings"]["context_extensions"]["policy"], "api");
        assert!(api["check_settings"].get("with_request_body").is_none());
        assert_eq!(g.doc["routes"], json!([]));
    }

    #[test]
    fn login_policies_add_cookie_accept_and_the_logout_checks_and_a_body_route() {
        let g = generate(&cfg(LOGIN), &Options::default());
        let names = exact(&g.doc);
        for h in [
            "authorization",
            "cookie",
            "accept",
            "x-requested-with",
            "origin",
            "sec-fetch-site",
            "content-type",
        ] {
            assert!(names.contains(&h.to_string()), "{h} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with(':') || n == "host"));
        // the policy's own route sends no body; the back-channel path does
        let web = &g.doc["per_route"]["web"][EXT_AUTHZ]["check_settings"];
        assert!(web.get("with_request_body").is_none());
        let routes = g.doc["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0]["match"]["path"], "/oauth2/backchannel-logout");
        let cs = &routes[0]["typed_per_filter_config"][EXT_AUTHZ]["check_settings"];
        assert_eq!(cs["context_extensions"]["policy"], "web");
        assert_eq!(cs["with_request_body"]["max_request_bytes"], 16384);
        assert_eq!(cs["with_request_body"]["pack_as_bytes"], true);
    }

    #[test]
    fn client_credential_headers_are_sent_exactly() {
        let g = generate(
            &cfg(r#"
[policies.cc]
provider = "okta"
auth_methods = ["client_credentials"]
client_credentials_param_type = ["header"]
client_arg = "X-Client-Id"
client_secret_arg = "X-Client-Secret"
"#),
            &Options::default(),
        );
        let names = exact(&g.doc);
        assert!(names.contains(&"x-client-id".to_string()), "{names:?}");
        assert!(names.contains(&"x-client-secret".to_string()), "{names:?}");
        assert!(!names.contains(&"cookie".to_string()));
    }

    /// Token places alone (no login): a token cookie makes Envoy send `Cookie`; a form-body token makes it send
    /// the body of every request of that policy (and the headers that say whether the body is whole and plain).
    #[test]
    fn token_places_add_the_cookie_and_the_body_they_read() {
        let places = |p: &str| {
            let cookie = if p.contains("cookie") {
                "bearer_token_cookie_name = \"at\"\n"
            } else {
                ""
            };
            cfg(&format!(
                "[policies.tp]\nprovider = \"okta\"\nauth_methods = [\"bearer\"]\nbearer_token_param_type = {p}\n{cookie}"
            ))
        };
        let body_headers = [
            "content-type",
            "content-length",
            "content-encoding",
            "x-envoy-auth-partial-body",
        ];
        let g = generate(&places(r#"["header", "cookie"]"#), &Options::default());
        let names = exact(&g.doc);
        assert!(names.contains(&"cookie".to_string()), "{names:?}");
        assert!(
            !body_headers.iter().any(|h| names.contains(&h.to_string())),
            "{names:?}"
        );
        assert!(!names.contains(&"accept".to_string()), "{names:?}");
        let tp = &g.doc["per_route"]["tp"][EXT_AUTHZ]["check_settings"];
        assert!(tp.get("with_request_body").is_none(), "{tp}");

        let g = generate(&places(r#"["header", "body"]"#), &Options::default());
        let names = exact(&g.doc);
        for h in body_headers {
            assert!(names.contains(&h.to_string()), "{h} missing from {names:?}");
        }
        assert!(!names.contains(&"cookie".to_string()), "{names:?}");
        let tp = &g.doc["per_route"]["tp"][EXT_AUTHZ]["check_settings"];
        assert_eq!(tp["with_request_body"]["pack_as_bytes"], true, "{tp}");
        assert_eq!(
            tp["with_request_body"]["allow_partial_message"], false,
            "{tp}"
        );
        assert_eq!(g.doc["routes"], json!([]));
    }

    #[test]
    fn needs_body_only_for_the_backchannel_path() {
        let c = cfg(&format!("{BEARER}{LOGIN}"));
        let by = |n: &str| c.policies.iter().find(|p| p.name == n).unwrap();
        assert_eq!(needs_body(by("api")), BodyNeed::Nothing);
        assert_eq!(
            needs_body(by("web")),
            BodyNeed::Paths(vec!["/oauth2/backchannel-logout".into()])
        );
    }

    #[test]
    fn spellings_regex_matches_dash_and_underscore_only() {
        let re = regex::Regex::new(&format!(
            "^(?:{})$",
            regexes(&generate(&cfg(BEARER), &Options::default()).doc)[0]
        ))
        .unwrap();
        assert!(re.is_match("x-user") && re.is_match("x_user"));
        assert!(!re.is_match("x-users") && !re.is_match("xxuser"));
    }

    #[test]
    fn yaml_is_block_style_with_quoted_strings() {
        let y = to_yaml(&json!({"a": {"@type": "t", "l": [{"exact": "x"}, "y"], "e": []}, "n": 1}));
        assert_eq!(
            y,
            "a:\n  \"@type\": \"t\"\n  e: []\n  l:\n  - exact: \"x\"\n  - \"y\"\nn: 1\n"
        );
    }

    /// Every header the code reads by a fixed name is in [`READ_HEADERS`]; a read whose name comes from elsewhere
    /// must be one of the policy-derived reads [`allowed_headers`] knows (client-credential headers, controlled
    /// headers). This fails when someone adds `view.header("x-new")` without telling `envoy-config`.
    #[test]
    fn every_header_read_is_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let call =
            regex::Regex::new(r"\.(header|header_values|has_header)\(\s*([^,()]*(?:\(\))?)\s*\)")
                .unwrap();
        // the policy's client-credential header names (allowed_headers adds them)
        let dynamic = ["id_h.as_str()", "secret_h.as_str()", "h.as_str()", "name"];
        let mut files = vec![root.clone()];
        let mut seen = 0;
        let mut problems = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") || p.ends_with("envoy_config.rs") {
                continue;
            }
            if p.ends_with("offline_tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // unit tests read whatever headers they build
            let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            for c in call.captures_iter(text) {
                let arg = c[2].trim();
                seen += 1;
                if let Some(lit) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                    if !READ_HEADERS.iter().any(|(n, _)| *n == lit) {
                        problems.push(format!("{}: reads header {lit:?}", p.display()));
                    }
                } else if !dynamic.contains(&arg) {
                    problems.push(format!("{}: reads header {arg}", p.display()));
                }
            }
        }
        assert!(seen >= 8, "the scan found only {seen} header reads");
        assert!(
            problems.is_empty(),
            "add these to READ_HEADERS (and allowed_headers): {problems:#?}"
        );
    }
}
