//! The mapping table, route precedence and the outputs of the Kong importer.

use serde_json::{Value, json};
use toml::Table;

use super::*;

const ISSUER: &str = "https://dev-123.okta.com/oauth2/default";

/// A decK file with one service, one route `/app` and the plugin `config` on the route.
fn deck_with(config: Value) -> String {
    json!({
        "_format_version": "3.0",
        "services": [{
            "name": "svc",
            "url": "http://httpbin.org",
            "routes": [{
                "name": "app",
                "paths": ["/app"],
                "plugins": [{ "name": "openid-connect", "config": config }]
            }]
        }]
    })
    .to_string()
}

fn run(text: &str) -> Import {
    let mut n = 0;
    import_with(text, &mut || {
        n += 1;
        format!("secret-{n}")
    })
    .expect("imports")
}

fn toml_of(i: &Import) -> Table {
    toml::from_str(&i.config_toml).expect("the output is TOML")
}

fn base() -> serde_json::Map<String, Value> {
    json!({
        "issuer": ISSUER,
        "client_id": ["0oa-client"],
        "client_secret": ["s3cret"],
        "auth_methods": ["bearer", "authorization_code", "session"],
        "redirect_uri": ["https://app.example.com/app/callback"],
    })
    .as_object()
    .unwrap()
    .clone()
}

/// A value of the right shape for a mapped parameter.
fn sample(kong: &str) -> Value {
    match kong {
        "issuer" => json!(ISSUER),
        "client_id" | "client_secret" | "client_arg" => json!(["x"]),
        "client_auth" | "token_endpoint_auth_method" => json!(["private_key_jwt"]),
        "client_jwk" => json!([{ "kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c" }]),
        "client_alg" => json!(["ES256"]),
        "leeway" | "timeout" | "rediscovery_lifetime" | "cache_ttl" | "cache_ttl_neg" => json!(7),
        "session_idling_timeout"
        | "session_absolute_timeout"
        | "session_cookie_idletime"
        | "session_cookie_lifetime" => json!(600),
        "auth_methods" => json!(["bearer", "session", "authorization_code"]),
        "bearer_token_param_type" => json!(["header", "cookie"]),
        "client_credentials_param_type" => json!(["header"]),
        "scopes" | "scopes_required" | "audience_required" | "groups_required"
        | "roles_required" => json!(["a b", "c"]),
        "scopes_claim" | "audience_claim" | "groups_claim" | "roles_claim" => {
            json!(["realm", "x"])
        }
        "claims_forbidden" | "upstream_headers_claims" => json!(["sub"]),
        "upstream_headers_names" => json!(["x-user"]),
        "logout_methods" => json!(["POST"]),
        "redirect_uri" | "logout_redirect_uri" => json!(["https://app.example.com/x"]),
        "introspect_jwt_tokens" | "display_errors" | "logout_revoke" => json!(true),
        "logout_revoke_access_token" | "logout_revoke_refresh_token" => json!(false),
        "cache_introspection" => json!(false),
        "session_storage" => json!("redis"),
        "session_redis_host" => json!("redis.internal"),
        "session_redis_port" => json!(6380),
        "logout_uri_suffix" => json!("/logout"),
        "session_secret" => json!("kong-secret"),
        "consumer_claim" => json!(["sub"]),
        _ if kong.ends_with("_endpoint") => json!("https://idp.example.com/x"),
        _ => json!("x-header"),
    }
}

#[test]
fn every_parameter_maps_or_gives_a_reason() {
    let mut seen = std::collections::HashSet::new();
    for p in PARAMS {
        assert!(seen.insert(p.kong), "{} listed twice", p.kong);
        match p.mapping {
            Mapping::Mapped { to, partial, .. } => {
                assert!(!to.is_empty(), "{}", p.kong);
                assert!(partial.is_none_or(|s| !s.is_empty()), "{}", p.kong);
                assert_eq!(
                    p.risk,
                    Risk::Never,
                    "{}: a mapped parameter is never at risk",
                    p.kong
                );
            }
            Mapping::Unsupported(why) | Mapping::NotApplicable(why) => {
                assert!(why.len() > 10, "{}: give a reason", p.kong);
            }
        }
    }
    // the four flows' parameters are all in the table
    for k in [
        "issuer",
        "client_id",
        "client_secret",
        "client_auth",
        "auth_methods",
        "scopes",
        "scopes_claim",
        "scopes_required",
        "audience_required",
        "groups_claim",
        "groups_required",
        "roles_claim",
        "roles_required",
        "upstream_headers_claims",
        "upstream_headers_names",
        "redirect_uri",
        "logout_uri_suffix",
        "logout_methods",
        "logout_revoke",
        "session_secret",
        "bearer_token_param_type",
        "introspection_endpoint",
        "cache_ttl",
    ] {
        assert!(param(k).is_some(), "{k} missing from the table");
    }
}

#[test]
fn every_mapped_parameter_lands_under_its_name() {
    for p in PARAMS {
        let Mapping::Mapped { to, level, .. } = p.mapping else {
            continue;
        };
        let mut cfg = base();
        cfg.insert(p.kong.into(), sample(p.kong));
        if p.kong.starts_with("session_redis") {
            cfg.insert("session_storage".into(), json!("redis"));
        }
        if p.kong.starts_with("logout_revoke_") {
            cfg.insert("logout_revoke".into(), json!(true));
        }
        if p.kong == "consumer_claim" {
            cfg.insert("consumer_optional".into(), json!(true));
        }
        if p.kong == "client_credentials_param_type" || p.kong == "client_arg" {
            cfg.insert("auth_methods".into(), json!(["client_credentials"]));
        }
        if p.kong == "cache_ttl"
            || p.kong == "cache_introspection"
            || p.kong == "introspect_jwt_tokens"
        {
            cfg.insert("auth_methods".into(), json!(["introspection"]));
        }
        let i = run(&deck_with(Value::Object(cfg)));
        let t = toml_of(&i);
        let table = match level {
            Level::Provider => t["providers"]["okta"].as_table(),
            Level::Policy => t["policies"]["app"].as_table(),
            Level::Store => t.get("store").and_then(toml::Value::as_table),
        }
        .unwrap_or_else(|| panic!("{}: no {level:?} table in\n{}", p.kong, i.config_toml));
        assert!(
            table.contains_key(to),
            "{} should become {level:?}.{to}:\n{}",
            p.kong,
            i.config_toml
        );
        assert!(
            !i.has_errors(),
            "{}: {:?}",
            p.kong,
            i.notes
                .iter()
                .filter(|n| n.severity == Severity::Error)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn unmapped_parameters_are_listed_and_risky_ones_fail_the_import() {
    for p in PARAMS {
        if matches!(p.mapping, Mapping::Mapped { .. }) {
            continue;
        }
        let weak = match p.risk {
            Risk::Never => continue,
            Risk::IfSet | Risk::Unless(_) => json!("strict"),
            Risk::IfTrue => json!(true),
        };
        let mut cfg = base();
        cfg.insert(p.kong.into(), weak);
        let i = run(&deck_with(Value::Object(cfg.clone())));
        assert!(i.has_errors(), "{} should fail the import", p.kong);
        assert!(
            i.notes
                .iter()
                .any(|n| n.param == p.kong && n.severity == Severity::Error),
            "{}",
            p.kong
        );
        // the harmless value of the same parameter passes
        let harmless = match p.risk {
            Risk::Unless(ok) => json!(ok),
            _ => Value::Null,
        };
        cfg.insert(p.kong.into(), harmless);
        assert!(
            !run(&deck_with(Value::Object(cfg))).has_errors(),
            "{}",
            p.kong
        );
    }
    // a harmless unsupported one is listed with its reason, and the import passes
    let mut cfg = base();
    cfg.insert("session_remember".into(), json!(true));
    cfg.insert("ssl_verify".into(), json!(false));
    let i = run(&deck_with(Value::Object(cfg)));
    assert!(!i.has_errors());
    let n = i
        .notes
        .iter()
        .find(|n| n.param == "session_remember")
        .unwrap();
    assert_eq!(n.severity, Severity::Unmapped);
    assert!(n.to_string().contains("persistent"), "{n}");
    // an unknown parameter fails closed
    let mut cfg = base();
    cfg.insert("new_kong_knob".into(), json!("x"));
    assert!(run(&deck_with(Value::Object(cfg))).has_errors());
    // consumer_claim needs consumer_optional = true
    let mut cfg = base();
    cfg.insert("consumer_claim".into(), json!(["sub"]));
    assert!(run(&deck_with(Value::Object(cfg))).has_errors());
}

#[test]
fn restricting_plugins_fail_the_import_others_are_listed() {
    let deck = |plugin: &str| {
        json!({
            "_format_version": "3.0",
            "services": [{ "name": "svc", "url": "http://up:8080", "routes": [{
                "name": "r", "paths": ["/r"],
                "plugins": [{ "name": "openid-connect", "config": base() }, { "name": plugin }]
            }]}]
        })
        .to_string()
    };
    assert!(run(&deck("acl")).has_errors());
    assert!(run(&deck("ip-restriction")).has_errors());
    for auth in ["saml", "header-cert-auth"] {
        assert!(run(&deck(auth)).has_errors(), "{auth}");
    }
    // A plugin the importer does not know may restrict access: fail closed.
    let i = run(&deck("my-custom-auth"));
    assert!(i.has_errors());
    assert!(
        i.notes
            .iter()
            .any(|n| n.at.contains("my-custom-auth") && n.message.contains("unknown")),
        "{:?}",
        i.notes
    );
    let i = run(&deck("correlation-id"));
    assert!(!i.has_errors());
    assert!(i.notes.iter().any(|n| n.at.contains("correlation-id")));
    // The two lists do not overlap, and openid-connect is in neither.
    for p in RESTRICTING_PLUGINS {
        assert!(!NON_RESTRICTING_PLUGINS.contains(p), "{p}");
    }
    assert!(
        ![RESTRICTING_PLUGINS, NON_RESTRICTING_PLUGINS]
            .concat()
            .contains(&"openid-connect")
    );
}

const PRECEDENCE: &str = r#"
_format_version: "3.0"
plugins:
- name: openid-connect
  config: { issuer: "https://global.example.com", client_id: g, auth_methods: [bearer] }
services:
- name: svc
  url: http://up:8080/base
  plugins:
  - name: openid-connect
    config: { issuer: "https://service.example.com", client_id: s, auth_methods: [introspection] }
  routes:
  - name: on-route
    paths: ["/route"]
    methods: [get, POST]
    plugins:
    - name: openid-connect
      instance_name: mine
      config: { issuer: "https://route.example.com", client_id: r, auth_methods: [bearer] }
  - name: on-service
    paths: ["/svc", "~/items/\\d+$"]
    strip_path: false
  - name: disabled-on-route
    paths: ["/off"]
    plugins:
    - name: openid-connect
      enabled: false
      config: { issuer: "https://off.example.com", client_id: o }
- name: other
  host: other.internal
  port: 9000
  protocol: https
  routes:
  - name: global-only
    hosts: [api.example.com]
routes:
- name: top-level
  service: { name: other }
  paths: ["/top"]
"#;

#[test]
fn route_beats_service_beats_global() {
    let i = run(PRECEDENCE);
    let t = toml_of(&i);
    let pol = |n: &str| t["policies"][n]["provider"].as_str().unwrap().to_string();
    let issuer = |p: &str| {
        t["providers"][p]["issuer"]
            .as_str()
            .unwrap()
            .trim_start_matches("https://")
            .to_string()
    };
    assert_eq!(issuer(&pol("mine")), "route.example.com");
    assert_eq!(issuer(&pol("svc")), "service.example.com");
    assert_eq!(issuer(&pol("global")), "global.example.com");
    let routes = t["routes"].as_array().unwrap();
    let policy_of = |key: &str, value: &str| {
        routes
            .iter()
            .find(|r| r.get(key).and_then(toml::Value::as_str) == Some(value))
            .map(|r| r["policy"].as_str().unwrap().to_string())
    };
    assert_eq!(policy_of("path_prefix", "/route").as_deref(), Some("mine"));
    assert_eq!(policy_of("path_prefix", "/svc").as_deref(), Some("svc"));
    // a disabled route plugin leaves the service's in force (Kong runs only enabled plugins)
    assert_eq!(policy_of("path_prefix", "/off").as_deref(), Some("svc"));
    assert_eq!(policy_of("path_prefix", "/top").as_deref(), Some("global"));
    // Kong's regex path (prefix-anchored) -> a whole-path regex; `$` keeps its end
    assert_eq!(
        policy_of("path_regex", "(?:/items/\\d+)").as_deref(),
        Some("svc")
    );
    let global_only = routes
        .iter()
        .find(|r| r.get("hosts").is_some())
        .expect("host route");
    assert_eq!(global_only["path_prefix"].as_str(), Some("/"));
    assert_eq!(global_only["policy"].as_str(), Some("global"));
    let on_route = routes
        .iter()
        .find(|r| r["policy"].as_str() == Some("mine"))
        .unwrap();
    assert_eq!(
        on_route["methods"].as_array().unwrap(),
        &vec![toml::Value::from("GET"), toml::Value::from("POST")]
    );
    assert!(!i.has_errors(), "{:?}", i.notes);
}

#[test]
fn a_host_bound_route_is_matched_before_a_host_less_one_in_its_virtual_host() {
    // Kong ranks host + path above path alone: a plugin-less host-less `/public` must not shadow the protected
    // `api.x` + `/` for `api.x/public/secret`.
    let text = r#"
_format_version: "3.0"
services:
- name: svc
  url: http://up:8080
  routes:
  - name: protected
    hosts: ["api.x"]
    paths: ["/"]
    plugins:
    - name: openid-connect
      config: { issuer: "https://idp.example.com", client_id: c, auth_methods: [bearer] }
  - name: public
    paths: ["/public"]
"#;
    let i = run(text);
    let doc: Value = serde_yaml::from_str(&i.envoy_yaml).unwrap();
    let vhosts = doc["route_config"]["virtual_hosts"].as_array().unwrap();
    let api = vhosts
        .iter()
        .find(|v| {
            v["domains"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d == "api.x")
        })
        .expect("a virtual host for api.x");
    let names: Vec<&str> = api["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["protected", "public"]);
    assert!(i.envoy_yaml.contains("normalize_path: true"));
}

#[test]
fn envoy_routes_name_policies_and_disable_ext_authz_without_the_plugin() {
    let text = r#"
_format_version: "3.0"
services:
- name: svc
  url: http://up:8080/v1
  routes:
  - name: api
    paths: ["/api"]
    plugins:
    - name: openid-connect
      config: { issuer: "https://idp.example.com", client_id: c, auth_methods: [bearer] }
  - name: api-long
    paths: ["/api/admin"]
    strip_path: false
    plugins:
    - name: openid-connect
      config: { issuer: "https://idp.example.com", client_id: c, auth_methods: [bearer], scopes_required: [admin] }
  - name: public
    paths: ["/public"]
"#;
    let i = run(text);
    let doc: Value = serde_yaml::from_str(&i.envoy_yaml).unwrap();
    let routes = doc["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    // longer prefixes first, as Kong matches them
    assert_eq!(names, ["api-long", "public", "api"]);
    let by = |n: &str| routes.iter().find(|r| r["name"] == n).unwrap().clone();
    let authz = |r: &Value| r["typed_per_filter_config"]["envoy.filters.http.ext_authz"].clone();
    let (api, long, public) = (by("api"), by("api-long"), by("public"));
    assert_eq!(
        authz(&api)["check_settings"]["context_extensions"]["policy"],
        "api"
    );
    assert_eq!(
        authz(&long)["check_settings"]["context_extensions"]["policy"],
        "api-long"
    );
    assert_eq!(authz(&public)["disabled"], true);
    assert_eq!(api["match"]["prefix"], "/api");
    // strip_path (Kong's default): /api/x -> /v1/x; without it the service path is prepended
    assert_eq!(api["route"]["regex_rewrite"]["pattern"]["regex"], "^/api/?");
    assert_eq!(api["route"]["regex_rewrite"]["substitution"], "/v1/");
    assert_eq!(long["route"]["regex_rewrite"]["pattern"]["regex"], "^/");
    assert_eq!(doc["clusters"][0]["name"], "svc");
    let t = toml_of(&i);
    // the public route has no [[routes]] entry (it is public through Envoy only)
    assert_eq!(t["routes"].as_array().unwrap().len(), 2);
}

#[test]
fn secrets_vault_references_and_session_secrets() {
    let mut cfg = base();
    cfg.insert("client_secret".into(), json!(["{vault://env/okta-secret}"]));
    cfg.insert("session_secret".into(), json!("kong-session-secret"));
    let i = run(&deck_with(Value::Object(cfg)));
    assert!(!i.config_toml.contains("vault://"), "{}", i.config_toml);
    let t = toml_of(&i);
    assert_eq!(
        t["providers"]["okta"]["client_secret_file"].as_str(),
        Some("FILL-ME")
    );
    assert!(t["providers"]["okta"].get("client_secret").is_none());
    // Kong's session secret is never copied: a fresh key, and a warning that sessions do not carry over
    assert!(!i.config_toml.contains("kong-session-secret"));
    assert_eq!(
        t["policies"]["app"]["session_secret"].as_str(),
        Some("secret-1")
    );
    assert!(
        i.notes
            .iter()
            .any(|n| n.param == "session_secret" && n.severity == Severity::Warning)
    );
    // a plain secret is copied, and said so
    let i = run(&deck_with(Value::Object(base())));
    assert_eq!(
        toml_of(&i)["providers"]["okta"]["client_secret"].as_str(),
        Some("s3cret")
    );
    assert!(
        i.notes
            .iter()
            .any(|n| n.param == "client_secret" && n.message.contains("in clear"))
    );
    // nothing in the report echoes a secret
    assert!(i.notes.iter().all(|n| !n.to_string().contains("s3cret")));
}

#[test]
fn login_policies_sharing_a_kong_secret_share_the_new_one() {
    let text = |a: &str, b: &str| {
        let plug = |secret: &str, scope: &str| {
            let mut c = base();
            c.insert("session_secret".into(), json!(secret));
            c.insert("groups_required".into(), json!([scope]));
            json!([{ "name": "openid-connect", "config": c }])
        };
        json!({
            "_format_version": "3.0",
            "services": [{ "name": "svc", "url": "http://up", "routes": [
                { "name": "one", "paths": ["/one"], "plugins": plug(a, "g1") },
                { "name": "two", "paths": ["/two"], "plugins": plug(b, "g2") },
            ]}]
        })
        .to_string()
    };
    let t = toml_of(&run(&text("same", "same")));
    assert_eq!(
        t["policies"]["one"]["session_secret"],
        t["policies"]["two"]["session_secret"]
    );
    let t = toml_of(&run(&text("a", "b")));
    assert_ne!(
        t["policies"]["one"]["session_secret"],
        t["policies"]["two"]["session_secret"]
    );
    // one provider for one issuer + client
    assert_eq!(t["providers"].as_table().unwrap().len(), 1);
}

#[test]
fn kong_defaults_and_oddities() {
    // no auth_methods: Kong's all; without redirect_uri the login is dropped (stricter), noted
    let i = run(&deck_with(
        json!({ "issuer": format!("{ISSUER}/.well-known/openid-configuration"), "client_id": "c" }),
    ));
    let t = toml_of(&i);
    assert_eq!(t["providers"]["okta"]["issuer"].as_str(), Some(ISSUER));
    assert_eq!(
        t["policies"]["app"]["auth_methods"],
        toml::Value::try_from(["bearer", "introspection", "client_credentials"]).unwrap()
    );
    assert_eq!(
        t["policies"]["app"]["allow_any_audience"].as_bool(),
        Some(true)
    );
    assert!(i.notes.iter().any(|n| n.param == "redirect_uri"));
    // only unsupported methods: nothing left, an error
    let i = run(&deck_with(
        json!({ "issuer": ISSUER, "auth_methods": ["password", "kong_oauth2"] }),
    ));
    assert!(i.has_errors());
    // logout_uri_suffix on the route's one path
    let mut cfg = base();
    cfg.insert("logout_uri_suffix".into(), json!("/logout"));
    cfg.insert("session_idling_timeout".into(), json!(0));
    let i = run(&deck_with(Value::Object(cfg)));
    let t = toml_of(&i);
    assert_eq!(
        t["policies"]["app"]["logout_path"].as_str(),
        Some("/app/logout")
    );
    assert!(
        t["policies"]["app"]
            .get("session_idle_timeout_secs")
            .is_none()
    );
    // unreadable input
    assert!(matches!(import("[1, 2"), Err(ImportError::Parse(_))));
    assert!(matches!(import("- a\n- b\n"), Err(ImportError::Shape(_))));
}

/// Route methods become an Envoy `:method` regex: only HTTP method tokens (Kong's own rule, `^%u+$`) are imported,
/// anything else fails the import instead of widening the route.
#[test]
fn route_methods_must_be_method_tokens() {
    let deck = |methods: Value| {
        json!({
            "_format_version": "3.0",
            "services": [{ "name": "svc", "url": "http://up:8080", "routes": [{
                "name": "r", "paths": ["/r"], "methods": methods,
                "plugins": [{ "name": "openid-connect", "config": base() }]
            }]}]
        })
        .to_string()
    };
    for bad in [json!(["GET|.*"]), json!(["GET", "P.ST"]), json!([""])] {
        let err = import_with(&deck(bad.clone()), &mut || "s".into())
            .expect_err(&bad.to_string())
            .to_string();
        assert!(err.contains("not an HTTP method"), "{bad}: {err}");
    }
    let i = run(&deck(json!(["get", "POST"])));
    let doc: Value = serde_yaml::from_str(&i.envoy_yaml).unwrap();
    let route = &doc["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(
        route["match"]["headers"][0]["string_match"]["safe_regex"]["regex"],
        "GET|POST"
    );
}

/// An output that cannot be serialized is an error, never an empty file written in its place.
#[test]
fn an_output_that_cannot_be_serialized_is_an_error() {
    struct Unwritable;
    impl serde::Serialize for Unwritable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("unwritable"))
        }
    }
    for out in [to_toml(&Unwritable), to_yaml(&Unwritable)] {
        let err = out.expect_err("an error, not an empty output");
        assert!(matches!(err, ImportError::Output(_)), "{err}");
        assert!(err.to_string().contains("unwritable"), "{err}");
    }
    assert!(to_toml(&toml::Table::new()).is_ok());
}
