//! Writes Envoy's route configuration for the deck's routes: each names its policy in
//! `context_extensions.policy`, a route without the plugin turns ext_authz off; plus a cluster per service.

use serde_json::{Value, json};

use super::convert::full_match_regex;
use super::deck::{Deck, Route};
use super::{ImportError, Note, Severity};

use crate::envoy_config::{EXT_AUTHZ, EXT_AUTHZ_PER_ROUTE as PER_ROUTE};

/// One Envoy route entry and what orders it (Kong's priority: routes with methods first, regex paths before
/// prefixes, by regex_priority, longer prefixes first).
struct Entry {
    /// Kong's order: a route naming hosts first, then one naming methods, regex paths (by `regex_priority`)
    /// before prefixes, longer prefixes first.
    key: (bool, bool, bool, i64, usize),
    value: Value,
}

fn entries(deck: &Deck, r: &Route, policy: Option<&str>, notes: &mut Vec<Note>) -> Vec<Entry> {
    let paths = if r.paths.is_empty() {
        vec!["/".to_string()]
    } else {
        r.paths.clone()
    };
    let service = r.service.map(|s| &deck.services[s]);
    if service.is_none() {
        notes.push(Note {
            severity: Severity::Info,
            at: format!("route {}", r.name),
            param: "service".into(),
            message: "no service: Envoy answers 503 there".into(),
        });
    }
    let authz = match policy {
        Some(p) => {
            json!({ "@type": PER_ROUTE, "check_settings": { "context_extensions": { "policy": p } } })
        }
        None => json!({ "@type": PER_ROUTE, "disabled": true }),
    };
    let many = paths.len() > 1;
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let regex = path.strip_prefix('~');
            let mut m = match regex {
                Some(re) => json!({ "safe_regex": { "regex": full_match_regex(re) } }),
                None => json!({ "prefix": path }),
            };
            if !r.methods.is_empty() {
                m["headers"] = json!([{
                    "name": ":method",
                    "string_match": { "safe_regex": { "regex": r.methods.iter().map(|m| regex::escape(m)).collect::<Vec<_>>().join("|") } }
                }]);
            }
            let action = match service {
                Some(s) => {
                    let mut a = json!({ "cluster": s.name });
                    let base = format!("{}/", s.path.trim_end_matches('/'));
                    let strip = match regex {
                        Some(re) => format!("^(?:{})/?", re.strip_prefix('^').unwrap_or(re)),
                        None => format!("^{}/?", regex::escape(path.trim_end_matches('/'))),
                    };
                    if r.strip_path {
                        a["regex_rewrite"] =
                            json!({ "pattern": { "regex": strip }, "substitution": base });
                    } else if base != "/" {
                        a["regex_rewrite"] =
                            json!({ "pattern": { "regex": "^/" }, "substitution": base });
                    }
                    ("route", a)
                }
                None => ("direct_response", json!({ "status": 503 })),
            };
            let name = if many {
                format!("{}-{}", r.name, i + 1)
            } else {
                r.name.clone()
            };
            let mut value = json!({
                "name": name,
                "match": m,
                "typed_per_filter_config": { EXT_AUTHZ: authz.clone() },
            });
            value[action.0] = action.1;
            Entry {
                key: (
                    // a host-bound route wins over a host-less one merged into the same virtual host (Kong ranks
                    // host + path above path alone): otherwise a plugin-less `/public` could shadow a protected `/`
                    !r.hosts.is_empty(),
                    !r.methods.is_empty(),
                    regex.is_some(),
                    if regex.is_some() { r.regex_priority } else { 0 },
                    if regex.is_some() { 0 } else { path.len() },
                ),
                value,
            }
        })
        .collect()
}

/// The Envoy YAML: `route_config` (virtual hosts by Kong host, each also holding the host-less routes) and
/// `clusters`.
pub(super) fn render(
    deck: &Deck,
    policies: &[Option<String>],
    notes: &mut Vec<Note>,
) -> Result<String, ImportError> {
    let mut hosts: Vec<String> = deck
        .routes
        .iter()
        .flat_map(|r| r.hosts.iter().cloned())
        .collect();
    hosts.sort();
    hosts.dedup();
    let mut per_route: Vec<Vec<Entry>> = Vec::new();
    for (r, p) in deck.routes.iter().zip(policies) {
        per_route.push(entries(deck, r, p.as_deref(), notes));
    }
    let vhost = |name: String, domains: Vec<String>, pick: &dyn Fn(&Route) -> bool| {
        let mut routes: Vec<&Entry> = deck
            .routes
            .iter()
            .zip(&per_route)
            .filter(|(r, _)| pick(r))
            .flat_map(|(_, e)| e.iter())
            .collect();
        // stable: equal keys keep file order
        routes.sort_by_key(|e| std::cmp::Reverse(e.key));
        json!({
            "name": name,
            "domains": domains,
            "routes": routes.iter().map(|e| e.value.clone()).collect::<Vec<_>>(),
        })
    };
    let mut vhosts = Vec::new();
    for h in &hosts {
        vhosts.push(vhost(
            format!("kong-{}", h.replace('*', "wildcard")),
            vec![h.clone()],
            &|r: &Route| r.hosts.is_empty() || r.hosts.contains(h),
        ));
    }
    if deck.routes.iter().any(|r| r.hosts.is_empty()) {
        vhosts.push(vhost(
            "kong-any-host".into(),
            vec!["*".into()],
            &|r: &Route| r.hosts.is_empty(),
        ));
    }
    let clusters: Vec<Value> = deck
        .services
        .iter()
        .filter(|s| {
            deck.routes
                .iter()
                .any(|r| r.service.is_some_and(|i| deck.services[i].name == s.name))
        })
        .map(|s| {
            let mut c = json!({
                "name": s.name,
                "type": "STRICT_DNS",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": s.name,
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": { "address": s.host, "port_value": s.port }
                    } } }] }]
                }
            });
            if s.protocol == "https" {
                // The upstream's certificate is verified (Kong's default, tls_verify off, is not carried).
                c["transport_socket"] = crate::envoy_offload::verified_tls(&s.host);
            }
            c
        })
        .collect();
    let doc = json!({
        "route_config": { "name": "kong_import", "virtual_hosts": vhosts },
        "clusters": clusters,
    });
    let body = super::to_yaml(&doc)?;
    Ok(format!(
        "# Envoy routes imported from a Kong declarative config by `oidc-authz import-kong`.\n\
         # `route_config` goes in the HTTP connection manager, `clusters` in static_resources; the listener needs\n\
         # the ext_authz filter pointing at oidc-authz (see envoy/envoy.yaml). Each route names its policy in\n\
         # context_extensions.policy; a Kong route without the openid-connect plugin has ext_authz disabled.\n\
         # Kong normalises paths before it matches routes; Envoy does only when told: set, in the HTTP connection\n\
         # manager, normalize_path: true, merge_slashes: true and path_with_escaped_slashes_action:\n\
         # UNESCAPE_AND_REDIRECT, or `/public/../admin` may match a route without the plugin.\n{body}"
    ))
}
