//! `envoy-config --offload-bearer`: Envoy's jwt_authn + RBAC in place of the ext_authz hop for the bearer-only
//! policies whose every rule Envoy can express.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use url::Url;

use crate::config::{AuthMethod, Config, Policy, ProviderConfig};
use crate::envoy_config::{BodyNeed, EXT_AUTHZ, EXT_AUTHZ_PER_ROUTE, needs_body};
use crate::policy::access::Requirement;

const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
const RBAC: &str = "envoy.filters.http.rbac";
const HEADER_MUTATION: &str = "envoy.filters.http.header_mutation";
/// The key under jwt_authn's dynamic metadata where the verified payload goes (`payload_in_metadata`).
pub const PAYLOAD_KEY: &str = "jwt_payload";

/// What offloading adds to the output.
#[derive(Debug, Default)]
pub struct Plan {
    /// `http_filters` entries that go before ext_authz (header_mutation, jwt_authn, RBAC).
    pub filters: Vec<Value>,
    /// The `typed_per_filter_config` of each offloaded policy's routes.
    pub per_route: BTreeMap<String, Value>,
    /// The clusters the JWKS are fetched through.
    pub clusters: Vec<Value>,
}

/// Why a policy cannot be verified by Envoy alone; `None` when it can.
pub fn not_offloadable(cfg: &Config, p: &Policy) -> Option<String> {
    if p.auth_methods != [AuthMethod::Bearer] {
        let names: Vec<&str> = p.auth_methods.iter().map(|m| m.as_str()).collect();
        return Some(format!(
            "auth_methods {names:?}: only a policy whose one method is bearer can be offloaded"
        ));
    }
    if p.login.is_some() {
        return Some("it has a browser login".into());
    }
    if p.introspect_jwt_tokens {
        return Some("introspect_jwt_tokens asks the provider about every token".into());
    }
    if p.client_credential_headers.is_some() {
        return Some("it reads client credentials from headers".into());
    }
    if needs_body(p) != BodyNeed::Nothing {
        return Some("it reads request bodies".into());
    }
    if p.providers.len() > 1 {
        return Some("it takes tokens of several issuers (providers = [...])".into());
    }
    if p.bearer_token_places != crate::credentials::token_places::TokenPlaces::default() {
        return Some("it reads tokens from elsewhere than the Authorization header".into());
    }
    if !p.access.forbidden().is_empty() || p.access.consumer_rule().is_some() {
        return Some("claims_forbidden and consumer_claim are checked by oidc-authz only".into());
    }
    if p.upstream_access_token_header != crate::config::TokenHeader::default()
        || p.upstream_introspection_header.is_some()
        || p.upstream_consumer_header.is_some()
        || p.upstream_user_info_header.is_some()
    {
        return Some(
            "it sets upstream headers jwt_authn cannot (token, consumer, introspection, userinfo)"
                .into(),
        );
    }
    if let Some(h) = p
        .controlled_headers
        .iter()
        .find(|h| separators(h.as_str()) > MAX_SPELLED_SEPARATORS)
    {
        return Some(format!(
            "header {h} has more than {MAX_SPELLED_SEPARATORS} '-' or '_': Envoy could not remove every client-sent spelling of it"
        ));
    }
    let provider = &cfg.providers[p.provider];
    if provider.jwks_uri.is_none() {
        return Some(format!(
            "provider {} has no jwks_uri (jwt_authn does no discovery: set jwks_uri)",
            provider.name
        ));
    }
    if p.allow_any_audience {
        // oidc-authz refuses a token whose `aud` is exactly its own client_id (an ID token of its login); without
        // audiences jwt_authn would take it.
        return Some(
            "allow_any_audience: jwt_authn cannot refuse ID tokens by their audience".into(),
        );
    }
    if provider.audiences.is_empty() {
        return Some(format!("provider {} has no audiences", provider.name));
    }
    None
}

/// The offload plan of a config; each policy left on ext_authz gets a note saying why.
pub fn plan(cfg: &Config, notes: &mut Vec<String>) -> Plan {
    let mut out = Plan::default();
    let mut providers = serde_json::Map::new();
    let mut requirements = serde_json::Map::new();
    let mut clusters: BTreeMap<String, Value> = BTreeMap::new();
    for p in cfg.policies.iter() {
        if let Some(why) = not_offloadable(cfg, p) {
            notes.push(format!("policy {}: stays on ext_authz: {why}", p.name));
            continue;
        }
        let provider = &cfg.providers[p.provider];
        let Some(jwks) = provider.jwks_uri.as_ref() else {
            continue;
        };
        let cluster = jwks_cluster_name(jwks);
        clusters
            .entry(cluster.clone())
            .or_insert_with(|| jwks_cluster(&cluster, jwks));
        providers.insert(p.name.clone(), jwt_provider(p, provider, jwks, &cluster));
        requirements.insert(p.name.clone(), json!({ "provider_name": p.name }));
        let controlled: Vec<&str> = p.controlled_headers.iter().map(|h| h.as_str()).collect();
        let mut route = json!({
            JWT_AUTHN: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
                "requirement_name": p.name,
            },
            RBAC: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                "rbac": { "rules": { "action": "ALLOW", "policies": { p.name.clone(): {
                    "permissions": [{ "any": true }],
                    "principals": [principal(p)],
                } } } },
            },
            EXT_AUTHZ: {
                "@type": EXT_AUTHZ_PER_ROUTE,
                "disabled": true,
            },
        });
        if !controlled.is_empty() {
            // Before jwt_authn sets them: every client-sent copy of a header the policy sets goes.
            route[HEADER_MUTATION] = json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
                "mutations": { "request_mutations": controlled.iter()
                    .filter(|h| **h != "authorization")
                    .flat_map(|h| spellings(h))
                    .map(|h| json!({ "remove": h })).collect::<Vec<_>>() },
            });
        }
        out.per_route.insert(p.name.clone(), route);
    }
    if providers.is_empty() {
        return out;
    }
    out.filters.push(json!({
        "name": HEADER_MUTATION,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {},
        },
    }));
    out.filters.push(json!({
        "name": JWT_AUTHN,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "requirement_map": requirements,
        },
    }));
    out.filters.push(json!({
        "name": RBAC,
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC" },
    }));
    out.clusters = clusters.into_values().collect();
    out
}

/// The most `-`/`_` separators in a header an offloaded policy controls: each doubles the spellings Envoy must
/// remove (2^8 = 256 removals). A policy with a longer name stays on ext_authz, which matches any spelling.
const MAX_SPELLED_SEPARATORS: usize = 8;

/// How many `-` or `_` a header name has.
fn separators(name: &str) -> usize {
    name.bytes().filter(|b| matches!(b, b'-' | b'_')).count()
}

/// Every spelling of a header name with `-` or `_` at each separator (`x-user` and `x_user`): Envoy's header
/// removal matches a name exactly, and a listener that does not reject underscores passes `x_user` on. Only for
/// names of at most [`MAX_SPELLED_SEPARATORS`] separators ([`not_offloadable`] keeps the others on ext_authz).
fn spellings(name: &str) -> Vec<String> {
    let parts: Vec<&str> = name.split(['-', '_']).collect();
    let seps = parts.len() - 1;
    assert!(
        seps <= MAX_SPELLED_SEPARATORS,
        "not_offloadable keeps a policy with header {name} on ext_authz"
    );
    (0..1u32 << seps)
        .map(|mask| {
            let mut out = parts[0].to_string();
            for (i, part) in parts[1..].iter().enumerate() {
                out.push(if mask & (1 << i) == 0 { '-' } else { '_' });
                out.push_str(part);
            }
            out
        })
        .collect()
}

/// The jwt_authn provider of a policy.
fn jwt_provider(p: &Policy, provider: &ProviderConfig, jwks: &Url, cluster: &str) -> Value {
    let mut v = json!({
        "issuer": provider.issuer,
        "remote_jwks": {
            "http_uri": { "uri": jwks.as_str(), "cluster": cluster, "timeout": "5s" },
            "cache_duration": format!("{}s", provider.jwks_refresh.as_secs().max(1)),
            "async_fetch": { "fast_listener": false },
            "retry_policy": { "num_retries": 3 },
        },
        "forward": true,
        // only where oidc-authz reads it by default: jwt_authn's default also takes an `access_token` query parameter
        "from_headers": [{ "name": "authorization", "value_prefix": "Bearer " }],
        "payload_in_metadata": PAYLOAD_KEY,
        // 0 reads as unset, which jwt_authn takes as 60 s: 1 s is the nearest to no leeway it can do
        "clock_skew_seconds": provider.leeway_secs.max(1),
        "jwt_cache_config": { "jwt_cache_size": 1000 },
    });
    if !p.allow_any_audience {
        v["audiences"] = json!(provider.audiences);
    }
    let claims: Vec<Value> = p
        .upstream_headers
        .iter()
        .map(|h| json!({ "header_name": h.name.as_str(), "claim_name": h.claim.join(".") }))
        .collect();
    if !claims.is_empty() {
        v["claim_to_headers"] = Value::Array(claims);
    }
    v
}

/// The RBAC principal of a policy: an access token (no ID-token marks) meeting every requirement.
fn principal(p: &Policy) -> Value {
    let mut ids: Vec<Value> = vec![
        // an ID token (nonce, at_hash, c_hash, s_hash), a Keycloak refresh/ID token or a Cognito token other than
        // an access token is never an access token (flow::bearer::not_access_token, as Envoy can say it)
        json!({ "not_id": meta(&["nonce"], json!({ "present_match": true })) }),
        json!({ "not_id": meta(&["at_hash"], json!({ "present_match": true })) }),
        json!({ "not_id": meta(&["c_hash"], json!({ "present_match": true })) }),
        json!({ "not_id": meta(&["s_hash"], json!({ "present_match": true })) }),
        json!({ "not_id": meta(&["typ"], json!({ "string_match": {
            "safe_regex": { "regex": "(?i)id|refresh|offline|logout" } } })) }),
        json!({ "not_id": { "and_ids": { "ids": [
            meta(&["token_use"], json!({ "present_match": true })),
            { "not_id": meta(&["token_use"], json!({ "string_match": { "exact": "access", "ignore_case": true } })) },
        ] } } }),
    ];
    for r in p.access.requirements() {
        ids.push(requirement(r));
    }
    json!({ "and_ids": { "ids": ids } })
}

/// One Kong requirement: any alternative, each all its words, each word in the claim (array or spaced string).
fn requirement(r: &Requirement) -> Value {
    let alternatives: Vec<Value> = r
        .alternatives
        .iter()
        .map(|words| {
            let all: Vec<Value> = words.iter().map(|w| has_word(&r.claim, w)).collect();
            json!({ "and_ids": { "ids": all } })
        })
        .collect();
    json!({ "or_ids": { "ids": alternatives } })
}

/// The claim holds `word`: an array item equal to it, or a space-separated string with it as one word.
fn has_word(claim: &[String], word: &str) -> Value {
    let keys: Vec<&str> = claim.iter().map(String::as_str).collect();
    let re = format!(r"(.* )?{}( .*)?", regex::escape(word));
    json!({ "or_ids": { "ids": [
        meta(&keys, json!({ "list_match": { "one_of": { "string_match": { "exact": word } } } })),
        meta(&keys, json!({ "string_match": { "safe_regex": { "regex": re } } })),
    ] } })
}

/// A principal on jwt_authn's payload metadata at `claim`.
fn meta(claim: &[&str], value: Value) -> Value {
    let mut path = vec![json!({ "key": PAYLOAD_KEY })];
    path.extend(claim.iter().map(|k| json!({ "key": k })));
    json!({ "metadata": { "filter": JWT_AUTHN, "path": path, "value": value } })
}

/// The cluster name of a JWKS host.
fn jwks_cluster_name(u: &Url) -> String {
    let host = u.host_str().unwrap_or("jwks");
    let port = u.port_or_known_default().unwrap_or(443);
    format!("jwks_{}_{port}", host.replace(['.', ':', '[', ']'], "_"))
}

/// A cluster reaching the JWKS host (TLS with SNI for https).
fn jwks_cluster(name: &str, u: &Url) -> Value {
    let host = u.host_str().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = u.port_or_known_default().unwrap_or(443);
    let literal = host.parse::<std::net::IpAddr>().is_ok();
    let mut c = json!({
        "name": name,
        "type": if literal { "STATIC" } else { "STRICT_DNS" },
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": host, "port_value": port } } } }] }] },
    });
    if u.scheme() == "https" {
        c["transport_socket"] = verified_tls(host);
    }
    c
}

/// The `transport_socket` of a TLS upstream named `host` (a DNS name or an IP literal) whose certificate is
/// verified: the system's CA bundle (Debian's path) and the host in the certificate's subject alternative names;
/// SNI is the host when it is a name (RFC 6066 allows no IP literal there). Without a `validation_context` Envoy
/// verifies nothing: anyone between Envoy and the host could answer in its place (serve keys of its own).
pub(crate) fn verified_tls(host: &str) -> Value {
    let ip_literal = host.parse::<std::net::IpAddr>().is_ok();
    let mut tls = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": { "validation_context": {
            "trusted_ca": { "filename": "/etc/ssl/certs/ca-certificates.crt" },
            "match_typed_subject_alt_names": [{
                "san_type": if ip_literal { "IP_ADDRESS" } else { "DNS" },
                "matcher": { "exact": host },
            }],
        } },
    });
    if !ip_literal {
        tls["sni"] = json!(host);
    }
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": tls })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy_config::{Options, generate};

    const CFG: &str = r#"
[providers.okta]
issuer = "https://idp.example.com/oauth2/default"
jwks_uri = "https://idp.example.com/oauth2/default/v1/keys"
client_id = "c"
client_secret = "s"
audiences = ["api://default"]

[providers.nojwks]
issuer = "https://other.example.com"
audiences = ["api://x"]

[policies.api]
provider = "okta"
auth_methods = ["bearer"]
scopes_claim = ["scp"]
scopes_required = ["api:read api:write", "admin"]
upstream_headers_claims = ["sub", "org.id"]
upstream_headers_names = ["x-user", "x-org"]

[policies.mixed]
provider = "okta"
auth_methods = ["bearer", "introspection"]

[policies.other]
provider = "nojwks"
auth_methods = ["bearer"]
"#;

    fn out() -> crate::envoy_config::Generated {
        let cfg = Config::from_toml(CFG).expect("valid");
        generate(
            &cfg,
            &Options {
                offload_bearer: true,
                ..Default::default()
            },
        )
    }

    #[test]
    fn bearer_only_policy_goes_to_jwt_authn_and_rbac() {
        let g = out();
        let names: Vec<&str> = g.doc["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec![HEADER_MUTATION, JWT_AUTHN, RBAC, EXT_AUTHZ]);
        let jwt = &g.doc["http_filters"][1]["typed_config"];
        let api = &jwt["providers"]["api"];
        assert_eq!(api["issuer"], "https://idp.example.com/oauth2/default");
        assert_eq!(api["audiences"], json!(["api://default"]));
        assert_eq!(api["forward"], true);
        assert_eq!(api["payload_in_metadata"], PAYLOAD_KEY);
        assert!(api["jwt_cache_config"]["jwt_cache_size"].as_u64().unwrap() > 0);
        assert_eq!(
            api["remote_jwks"]["http_uri"]["uri"],
            "https://idp.example.com/oauth2/default/v1/keys"
        );
        let cluster = api["remote_jwks"]["http_uri"]["cluster"].as_str().unwrap();
        let clusters = g.doc["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 1);
        assert_eq!(clusters[0]["name"], cluster);
        assert_eq!(
            clusters[0]["transport_socket"]["typed_config"]["sni"],
            "idp.example.com"
        );
        assert_eq!(
            api["claim_to_headers"],
            json!([{"header_name": "x-user", "claim_name": "sub"},
                   {"header_name": "x-org", "claim_name": "org.id"}])
        );
        assert_eq!(jwt["requirement_map"]["api"]["provider_name"], "api");
        assert!(jwt["providers"].get("mixed").is_none());
        let route = &g.doc["per_route"]["api"];
        assert_eq!(route[EXT_AUTHZ]["disabled"], true);
        assert_eq!(route[JWT_AUTHN]["requirement_name"], "api");
        let removed: Vec<&str> = route[HEADER_MUTATION]["mutations"]["request_mutations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["remove"].as_str().unwrap())
            .collect();
        assert!(removed.contains(&"x-user") && removed.contains(&"x-org"));
    }

    #[test]
    fn rbac_expresses_kong_alternatives() {
        let g = out();
        let p = &g.doc["per_route"]["api"][RBAC]["rbac"]["rules"]["policies"]["api"];
        let ids = p["principals"][0]["and_ids"]["ids"].as_array().unwrap();
        // six ID-token guards (nonce, at_hash, c_hash, s_hash, typ, token_use), then the scopes requirement
        assert_eq!(ids.len(), 7);
        let guarded: Vec<&str> = ids[..6]
            .iter()
            .map(|g| {
                let m = &g["not_id"]["metadata"];
                let m = if m.is_null() {
                    &g["not_id"]["and_ids"]["ids"][0]["metadata"]
                } else {
                    m
                };
                m["path"][1]["key"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            guarded,
            ["nonce", "at_hash", "c_hash", "s_hash", "typ", "token_use"]
        );
        let alts = ids[6]["or_ids"]["ids"].as_array().unwrap();
        assert_eq!(alts.len(), 2);
        let first = alts[0]["and_ids"]["ids"].as_array().unwrap();
        assert_eq!(first.len(), 2);
        let word = &first[1]["or_ids"]["ids"];
        assert_eq!(
            word[0]["metadata"]["path"],
            json!([{"key": PAYLOAD_KEY}, {"key": "scp"}])
        );
        assert_eq!(
            word[0]["metadata"]["value"]["list_match"]["one_of"]["string_match"]["exact"],
            "api:write"
        );
        let re = word[1]["metadata"]["value"]["string_match"]["safe_regex"]["regex"]
            .as_str()
            .unwrap();
        let re = regex::Regex::new(&format!("^(?:{re})$")).unwrap();
        assert!(re.is_match("api:read api:write") && re.is_match("api:write"));
        assert!(!re.is_match("api:writer") && !re.is_match("xapi:write"));
    }

    #[test]
    fn the_jwks_host_s_certificate_is_verified() {
        let g = out();
        let clusters = g.doc["clusters"].as_array().unwrap();
        let tls = clusters
            .iter()
            .find_map(|c| c.get("transport_socket"))
            .expect("an https JWKS cluster");
        let v = &tls["typed_config"]["common_tls_context"]["validation_context"];
        assert_eq!(
            v["trusted_ca"]["filename"],
            "/etc/ssl/certs/ca-certificates.crt"
        );
        assert_eq!(
            v["match_typed_subject_alt_names"][0],
            json!({ "san_type": "DNS", "matcher": { "exact": "idp.example.com" } })
        );
        assert_eq!(tls["typed_config"]["sni"], "idp.example.com");
        // An IP literal: matched as an IP SAN, and no SNI (RFC 6066 allows host names only).
        let ip = verified_tls("192.0.2.7");
        let v = &ip["typed_config"]["common_tls_context"]["validation_context"];
        assert_eq!(
            v["match_typed_subject_alt_names"][0],
            json!({ "san_type": "IP_ADDRESS", "matcher": { "exact": "192.0.2.7" } })
        );
        assert!(ip["typed_config"].get("sni").is_none(), "{ip}");
    }

    #[test]
    fn the_rest_stays_on_ext_authz_with_a_reason() {
        let g = out();
        assert_eq!(
            g.doc["per_route"]["mixed"][EXT_AUTHZ]["check_settings"]["context_extensions"]["policy"],
            "mixed"
        );
        assert!(g.notes.iter().any(|n| n.starts_with("policy mixed:")
            && n.contains("only a policy whose one method is bearer")));
        assert!(
            g.notes
                .iter()
                .any(|n| n.starts_with("policy other:") && n.contains("jwks_uri"))
        );
        assert!(!g.notes.iter().any(|n| n.starts_with("policy api:")));
    }

    #[test]
    fn rules_and_places_jwt_authn_cannot_keep_stay_on_ext_authz() {
        let base = "[providers.okta]\nissuer = \"https://idp.example.com/oauth2/default\"\n\
                    jwks_uri = \"https://idp.example.com/oauth2/default/v1/keys\"\naudiences = [\"a\"]\n\
                    [policies.p]\nprovider = \"okta\"\nauth_methods = [\"bearer\"]\n";
        for (extra, why) in [
            ("claims_forbidden = [\"act\"]\n", "claims_forbidden"),
            ("consumer_claim = [\"sub\"]\n", "consumer_claim"),
            (
                "bearer_token_param_type = [\"header\", \"query\"]\n",
                "elsewhere",
            ),
            (
                "upstream_access_token_header = \"x-token\"\n",
                "upstream headers",
            ),
            (
                "upstream_consumer_header = \"x-consumer\"\nconsumer_claim = [\"sub\"]\n",
                "consumer",
            ),
            // 9 separators: 512 spellings to remove; ext_authz matches them all
            (
                "upstream_headers_claims = [\"sub\"]\nupstream_headers_names = [\"x-a-b-c-d-e-f_g-h-i\"]\n",
                "more than 8",
            ),
        ] {
            let cfg = Config::from_toml(&format!("{base}{extra}")).expect(extra);
            let p = &cfg.policies[0];
            let reason = not_offloadable(&cfg, p).unwrap_or_else(|| panic!("{extra} offloaded"));
            assert!(reason.contains(why), "{extra}: {reason}");
        }
        assert_eq!(
            not_offloadable(
                &Config::from_toml(base).unwrap(),
                &Config::from_toml(base).unwrap().policies[0]
            ),
            None
        );
        // Any audience: jwt_authn would take an ID token of our login (aud = client_id), which oidc-authz refuses.
        let any = Config::from_toml(&format!(
            "{}allow_any_audience = true\n",
            base.replace("audiences = [\"a\"]\n", "client_id = \"app\"\n")
        ))
        .unwrap();
        let reason = not_offloadable(&any, &any.policies[0]).expect("offloaded");
        assert!(reason.contains("allow_any_audience"), "{reason}");
    }

    #[test]
    fn jwt_authn_reads_only_the_authorization_header_and_removes_every_spelling() {
        let g = out();
        let api = &g.doc["http_filters"][1]["typed_config"]["providers"]["api"];
        assert_eq!(
            api["from_headers"],
            json!([{ "name": "authorization", "value_prefix": "Bearer " }])
        );
        let removed: Vec<&str> =
            g.doc["per_route"]["api"][HEADER_MUTATION]["mutations"]["request_mutations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["remove"].as_str().unwrap())
                .collect();
        for h in ["x-user", "x_user", "x-org", "x_org"] {
            assert!(removed.contains(&h), "{h} not removed: {removed:?}");
        }
        assert_eq!(spellings("a-b_c").len(), 4);
    }

    #[test]
    fn without_the_flag_nothing_is_offloaded() {
        let cfg = Config::from_toml(CFG).expect("valid");
        let g = generate(&cfg, &Options::default());
        assert_eq!(g.doc["http_filters"].as_array().unwrap().len(), 1);
        assert!(g.doc.get("clusters").is_none());
        assert!(g.notes.is_empty());
    }
}
