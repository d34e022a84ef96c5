//! Several issuers on one policy (`providers = ["a", "b"]`): a JWT's unverified `iss` picks which provider verifies it.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

use crate::provider::Provider;

/// From this many providers on, the issuer is looked up in a map rather than compared with each in turn.
const MAP_FROM: usize = 8;

/// base64url, padding optional (as in [`crate::flow::bearer`]).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A policy's providers, in config order (the first is the policy's `provider`), with a way from an issuer to one.
#[derive(Debug)]
pub struct Issuers {
    /// Every provider of the policy; never empty (validation guarantees at least one).
    providers: Box<[Arc<Provider>]>,
    /// Issuer -> index into `providers`, when there are [`MAP_FROM`] or more (issuers are distinct: validation).
    by_issuer: Option<HashMap<Box<str>, usize>>,
}

impl Issuers {
    /// The providers of one policy, in config order (at least one).
    pub fn new(providers: Vec<Arc<Provider>>) -> Self {
        let by_issuer = (providers.len() >= MAP_FROM).then(|| {
            providers
                .iter()
                .enumerate()
                .map(|(i, p)| (p.config.issuer.as_str().into(), i))
                .collect()
        });
        Issuers {
            providers: providers.into(),
            by_issuer,
        }
    }

    /// Every provider, in config order.
    pub fn all(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// The provider whose issuer is exactly `iss`.
    pub fn by_issuer(&self, iss: &str) -> Option<&Arc<Provider>> {
        match &self.by_issuer {
            Some(map) => map.get(iss).and_then(|&i| self.providers.get(i)),
            None => self.providers.iter().find(|p| p.config.issuer == iss),
        }
    }

    /// The provider that must verify this JWT: the only one of a one-provider policy (the token is not read: its
    /// issuer is checked after the signature, as always), else the one whose issuer the token's unverified `iss`
    /// names exactly. `None` (refuse, nothing fetched) when the token names no listed issuer.
    pub fn for_jwt(&self, token: &str) -> Option<&Arc<Provider>> {
        match &*self.providers {
            [only] => Some(only),
            _ => self.by_issuer(&unverified_iss(token)?),
        }
    }
}

/// The `iss` of a compact JWS's payload, read WITHOUT verifying anything: only to choose the provider whose keys,
/// issuer and audiences then verify the token fully. `None` when the payload is not base64url JSON with a string
/// `iss`.
pub fn unverified_iss(token: &str) -> Option<String> {
    /// Only `iss`: every other claim is skipped unparsed.
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = B64URL.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{Value, json};

    use super::*;
    use crate::authz::Authorizer;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::decision::{Decision, DenyStatus};
    use crate::provider::Endpoint;
    use crate::provider::fake::{FakeAnswer, FakeIdp};
    use crate::request::CheckView;
    use crate::rng::SequenceRng;
    use crate::telemetry::Metrics;

    const NOW: u64 = 1_800_000_000;
    const A: &str = "https://a.idp.test";
    const B: &str = "https://b.idp.test";

    const CONFIG: &str = r#"
[providers.a]
issuer = "https://a.idp.test"
client_id = "oidc-authz"
client_secret = "a-secret"
audiences = ["api://a"]
jwks_min_refetch_secs = 0

[providers.b]
issuer = "https://b.idp.test"
client_id = "oidc-authz-b"
client_secret = "b-secret"
audiences = ["api://b"]
leeway_secs = 0
jwks_min_refetch_secs = 0

[policies.both]
providers = ["b", "a"]
auth_methods = ["bearer"]
display_errors = true
upstream_headers_claims = ["iss"]
upstream_headers_names = ["x-issuer"]

[policies.intro]
providers = ["a", "b"]
auth_methods = ["introspection"]
display_errors = true
introspect_jwt_tokens = true
"#;

    /// A test key: signs here, published in one issuer's JWKS.
    struct Key {
        kid: &'static str,
        encoding: EncodingKey,
        jwk: Value,
    }

    impl Key {
        fn new(pem: &[u8], kid: &'static str) -> Self {
            let encoding = EncodingKey::from_rsa_pem(pem).unwrap();
            let jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
            let mut jwk = serde_json::to_value(jwk).unwrap();
            jwk["kid"] = json!(kid);
            jwk["use"] = json!("sig");
            Key { kid, encoding, jwk }
        }

        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(self.kid.into());
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    /// Two issuers behind one fake: discovery and JWKS answer per issuer (A publishes rsa1, B rsa2).
    struct World {
        authz: Authorizer,
        idp: Arc<FakeIdp>,
        a: Key,
        b: Key,
    }

    impl World {
        fn new() -> Self {
            let a = Key::new(include_bytes!("../../tests/support/keys/rsa1.pem"), "rsa1");
            let b = Key::new(include_bytes!("../../tests/support/keys/rsa2.pem"), "rsa2");
            let idp = Arc::new(FakeIdp::new());
            idp.answer_with(Endpoint::Discovery, |call| {
                let issuer = format!("https://{}", call.url.host_str().unwrap_or_default());
                FakeAnswer::json(200, FakeIdp::discovery_document(&issuer))
            });
            let (ja, jb) = (a.jwk.clone(), b.jwk.clone());
            idp.answer_with(Endpoint::Jwks, move |call| {
                let key = if call.url.as_str().starts_with(A) {
                    &ja
                } else {
                    &jb
                };
                FakeAnswer::json(200, json!({ "keys": [key] }))
            });
            let config = Config::from_toml(CONFIG).unwrap_or_else(|e| panic!("{e}"));
            let authz = Authorizer::with_idp(
                config,
                Arc::new(Metrics::new()),
                Arc::new(ManualClock::new(NOW)),
                Arc::new(SequenceRng::new(7)),
                idp.clone(),
            );
            World { authz, idp, a, b }
        }

        async fn check(&self, policy: &str, token: &str) -> Decision {
            let auth = format!("Bearer {token}");
            let mut req = crate::request::check_request(HttpRequest {
                id: "req-1".into(),
                host: "app.example.com".into(),
                scheme: "https".into(),
                ..crate::request::http_request("GET", "/x", &[("authorization", &auth)])
            });
            if let Some(attributes) = req.attributes.as_mut() {
                attributes.context_extensions =
                    HashMap::from([("policy".to_string(), policy.to_string())]);
            }
            self.authz.check(&CheckView::new(&req)).await
        }

        /// Calls to discovery and the JWKS, both issuers together.
        fn key_calls(&self) -> usize {
            self.idp.calls(Endpoint::Discovery) + self.idp.calls(Endpoint::Jwks)
        }
    }

    fn claims(iss: &str, aud: &str) -> Value {
        json!({"iss": iss, "aud": aud, "sub": "alice", "iat": NOW, "exp": NOW + 600})
    }

    /// The status and description of a deny (panics on anything else).
    fn deny(d: Decision) -> (DenyStatus, String) {
        match d {
            Decision::Deny(d) => (d.status, d.description),
            other => panic!("not a deny: {other:?}"),
        }
    }

    /// The `iss` an allow reports in its metadata and its `x-issuer` header.
    fn issuer_shown(d: Decision) -> (String, String) {
        match d {
            Decision::Allow(a) => {
                let meta = a.metadata.iter().find(|(k, _)| *k == "iss").unwrap();
                let header = a
                    .set_headers
                    .iter()
                    .find(|(k, _)| k.as_str() == "x-issuer")
                    .unwrap();
                (meta.1.clone(), header.1.clone())
            }
            other => panic!("not an allow: {other:?}"),
        }
    }

    #[test]
    fn unverified_iss_reads_only_a_string_iss() {
        let enc = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let jwt = |c: Value| format!("{}.{}.sig", enc(json!({"alg": "RS256"})), enc(c));
        assert_eq!(
            unverified_iss(&jwt(json!({"iss": A, "sub": "x"}))).as_deref(),
            Some(A)
        );
        // JSON escapes come back unescaped (an exact match follows)
        let escaped = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"iss":"https:\/\/a.idp.test"}"#);
        assert_eq!(
            unverified_iss(&format!("e30.{escaped}.sig")).as_deref(),
            Some(A)
        );
        for bad in [
            jwt(json!({"sub": "x"})),
            jwt(json!({"iss": 5})),
            jwt(json!("iss")),
            "a.!!!.c".to_string(),
            "opaque".to_string(),
        ] {
            assert_eq!(unverified_iss(&bad), None, "{bad}");
        }
    }

    #[test]
    fn issuers_are_matched_exactly_in_a_list_and_in_a_map() {
        let fake: Arc<FakeIdp> = Arc::new(FakeIdp::new());
        let provider = |issuer: String| {
            let toml = format!(
                "[providers.p]\nissuer = \"{issuer}\"\naudiences = [\"x\"]\n[policies.q]\nprovider = \"p\"\nauth_methods = [\"bearer\"]\n"
            );
            let cfg = Config::from_toml(&toml).unwrap();
            Arc::new(Provider::new(
                cfg.providers[0].clone(),
                fake.clone(),
                Arc::new(Metrics::new()),
            ))
        };
        for n in [2, MAP_FROM + 1] {
            let list: Vec<_> = (0..n)
                .map(|i| provider(format!("https://idp{i}.test")))
                .collect();
            let issuers = Issuers::new(list);
            assert_eq!(issuers.by_issuer.is_some(), n >= MAP_FROM);
            assert_eq!(issuers.all().len(), n);
            for i in 0..n {
                let iss = format!("https://idp{i}.test");
                assert_eq!(issuers.by_issuer(&iss).unwrap().config.issuer, iss);
            }
            for near in [
                "https://idp1.test/",
                "HTTPS://idp1.test",
                "https://idp1.tes",
                "",
            ] {
                assert!(issuers.by_issuer(near).is_none(), "{near}");
            }
        }
        // one provider: the token is not read (its issuer is checked after the signature)
        let one = Issuers::new(vec![provider(A.into())]);
        assert!(one.for_jwt("not even a jwt").is_some());
    }

    #[tokio::test]
    async fn each_listed_issuer_is_verified_with_its_own_provider() {
        let w = World::new();
        let d = w.check("both", &w.a.sign(&claims(A, "api://a"))).await;
        assert_eq!(issuer_shown(d), (A.to_string(), A.to_string()));
        let d = w.check("both", &w.b.sign(&claims(B, "api://b"))).await;
        assert_eq!(issuer_shown(d), (B.to_string(), B.to_string()));
        // each provider's own audiences: A's audience in B's token is refused
        let (status, why) = deny(w.check("both", &w.b.sign(&claims(B, "api://a"))).await);
        assert_eq!(status, DenyStatus::Unauthorized);
        assert!(why.contains("audience"), "{why}");
        // each provider's own leeway: B has none, A the default 30 s
        let late = |iss, aud| json!({"iss": iss, "aud": aud, "sub": "a", "exp": NOW - 5});
        assert!(matches!(
            w.check("both", &w.a.sign(&late(A, "api://a"))).await,
            Decision::Allow(_)
        ));
        let (status, why) = deny(w.check("both", &w.b.sign(&late(B, "api://b"))).await);
        assert_eq!(status, DenyStatus::Unauthorized);
        assert!(why.contains("expired"), "{why}");
    }

    #[tokio::test]
    async fn an_issuer_not_listed_is_refused_without_any_call() {
        let w = World::new();
        for token in [
            w.a.sign(&claims("https://c.idp.test", "api://a")),
            // a prefix, a trailing slash, another case: exact match only
            w.a.sign(&claims("https://a.idp.tes", "api://a")),
            w.a.sign(&claims("https://a.idp.test/", "api://a")),
            w.a.sign(&claims("HTTPS://A.IDP.TEST", "api://a")),
            w.a.sign(&json!({"aud": "api://a", "sub": "x", "exp": NOW + 60})),
        ] {
            let (status, why) = deny(w.check("both", &token).await);
            assert_eq!(status, DenyStatus::Unauthorized);
            assert_eq!(why, "the token was issued by another issuer");
            // introspection too: the token is sent to no provider
            let (status, _) = deny(w.check("intro", &token).await);
            assert_eq!(status, DenyStatus::Unauthorized);
        }
        assert_eq!(w.key_calls(), 0, "no discovery, no JWKS");
        assert_eq!(w.idp.calls(Endpoint::Introspection), 0);
    }

    #[tokio::test]
    async fn a_token_signed_by_one_issuer_claiming_another_is_refused() {
        let w = World::new();
        // signed with A's key, claiming B: verified with B's keys, which lack A's
        let (status, why) = deny(w.check("both", &w.a.sign(&claims(B, "api://b"))).await);
        assert_eq!(status, DenyStatus::Unauthorized);
        assert!(why.contains("signing key"), "{why}");
        // even with B's kid in the header: the signature does not verify with B's key
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa2".into());
        let forged = jsonwebtoken::encode(&header, &claims(B, "api://b"), &w.a.encoding).unwrap();
        let (status, why) = deny(w.check("both", &forged).await);
        assert_eq!(status, DenyStatus::Unauthorized);
        assert!(why.contains("signature"), "{why}");
        // and A's genuine token still passes afterwards (nothing of B's was cached for it)
        assert!(matches!(
            w.check("both", &w.a.sign(&claims(A, "api://a"))).await,
            Decision::Allow(_)
        ));
    }

    #[tokio::test]
    async fn introspection_of_a_jwt_goes_to_the_provider_its_iss_names() {
        let w = World::new();
        w.idp.answer(
            Endpoint::Introspection,
            200,
            json!({"active": true, "iss": B, "aud": "api://b", "sub": "bob", "exp": NOW + 60}),
        );
        let token = w.b.sign(&claims(B, "api://b"));
        let d = w.check("intro", &token).await;
        assert!(matches!(d, Decision::Allow(_)), "{d:?}");
        let call = w.idp.last(Endpoint::Introspection).unwrap();
        assert!(call.url.as_str().starts_with(B), "{}", call.url);
        // an opaque token goes to the first provider (A), whose answer names another issuer: refused
        let (status, _) = deny(w.check("intro", "opaque-token-1").await);
        assert_eq!(status, DenyStatus::Unauthorized);
        let call = w.idp.last(Endpoint::Introspection).unwrap();
        assert!(call.url.as_str().starts_with(A), "{}", call.url);
        // an answer without `iss`: the provider that answered is shown as the issuer
        w.idp.answer(
            Endpoint::Introspection,
            200,
            json!({"active": true, "aud": "api://a", "sub": "carol", "exp": NOW + 60}),
        );
        match w.check("intro", "opaque-token-2").await {
            Decision::Allow(a) => {
                let iss = a
                    .metadata
                    .iter()
                    .find(|(k, _)| *k == "iss")
                    .map(|(_, v)| v.as_str());
                assert_eq!(iss, Some(A));
            }
            other => panic!("not an allow: {other:?}"),
        }
    }
}
