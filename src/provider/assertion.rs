//! Client assertions (RFC 7523, OpenID Connect Core 9): how this service proves who it is at the IdP's token,
//! introspection and revocation endpoints with `client_auth = "private_key_jwt"` (a JWT signed with the private JWK
//! `client_jwk`) or `"client_secret_jwt"` (HS256 keyed with the client secret). jsonwebtoken signs; aws-lc-rs
//! (the crypto library already behind jsonwebtoken and the JWKS verifier) checks a JWK's private parts and
//! turns them into the PKCS#8 document jsonwebtoken loads.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Secret;

/// `client_assertion_type` of a JWT client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of one assertion (`exp - iat`): short, as RFC 7523 3 asks; Okta accepts at most an hour.
pub const ASSERTION_LIFETIME_SECS: u64 = 60;

/// The private key of `private_key_jwt`: parsed once at config time from the private JWK. Never printed: `Debug`
/// shows the algorithm and `kid` only.
#[derive(Clone)]
pub struct ClientKey {
    alg: Algorithm,
    kid: Option<String>,
    key: Arc<EncodingKey>,
    /// SHA-256 (hex) of the JWK's `d`, to recognise a key published in this repository.
    fingerprint: String,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why a `client_jwk` cannot sign. Never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not JSON, or not a JWK object.
    #[error("client_jwk is not a JWK (a JSON object with kty), nor a JWKS or a list holding one")]
    NotAJwk,
    /// A public key only.
    #[error("client_jwk is a public key: private_key_jwt needs the private JWK (with \"d\")")]
    PublicOnly,
    /// A key type or curve we cannot sign with.
    #[error("client_jwk: unsupported key {0} (RSA, or EC on P-256)")]
    Unsupported(String),
    /// `client_alg` (or the JWK's `alg`) does not fit the key.
    #[error(
        "client_alg {alg} does not fit the {kty} client_jwk (RSA: RS256 or PS256; EC P-256: ES256)"
    )]
    AlgMismatch { alg: String, kty: String },
    /// A member missing or not base64url.
    #[error("client_jwk: member {0:?} is missing or not base64url")]
    Member(&'static str),
    /// The parts do not form a valid key.
    #[error("client_jwk: the key's parts do not form a valid {0} private key")]
    Invalid(&'static str),
}

/// The names of `client_alg` that sign with a private key.
pub fn parse_key_alg(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "PS256" => Some(Algorithm::PS256),
        "ES256" => Some(Algorithm::ES256),
        _ => None,
    }
}

fn b64(jwk: &Map<String, Value>, member: &'static str) -> Result<Vec<u8>, KeyError> {
    jwk.get(member)
        .and_then(Value::as_str)
        .and_then(|s| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()
        })
        .filter(|b| !b.is_empty())
        .ok_or(KeyError::Member(member))
}

impl ClientKey {
    /// Reads a private JWK (or a JWKS or a JSON list holding exactly one key) and checks that it signs with `alg` (`None`: the
    /// JWK's `alg`, else RS256 for RSA and ES256 for EC).
    pub fn from_jwk(text: &str, alg: Option<Algorithm>) -> Result<ClientKey, KeyError> {
        let value: Value = serde_json::from_str(text).map_err(|_| KeyError::NotAJwk)?;
        let jwk = match value {
            Value::Object(mut o) if !o.contains_key("kty") => match o.remove("keys") {
                Some(Value::Array(mut keys)) if keys.len() == 1 => match keys.pop() {
                    Some(Value::Object(k)) => k,
                    _ => return Err(KeyError::NotAJwk),
                },
                _ => return Err(KeyError::NotAJwk),
            },
            Value::Object(o) => o,
            // Kong's `client_jwk` is a list (one JWK per client)
            Value::Array(mut keys) if keys.len() == 1 => match keys.pop() {
                Some(Value::Object(k)) => k,
                _ => return Err(KeyError::NotAJwk),
            },
            _ => return Err(KeyError::NotAJwk),
        };
        Self::from_map(&jwk, alg)
    }

    fn from_map(jwk: &Map<String, Value>, alg: Option<Algorithm>) -> Result<ClientKey, KeyError> {
        let kty = jwk
            .get("kty")
            .and_then(Value::as_str)
            .ok_or(KeyError::NotAJwk)?
            .to_string();
        if !jwk.contains_key("d") {
            return Err(KeyError::PublicOnly);
        }
        let jwk_alg = jwk.get("alg").and_then(Value::as_str);
        let alg = match (alg, jwk_alg) {
            (Some(a), _) => a,
            (None, Some(name)) => parse_key_alg(name).ok_or_else(|| KeyError::AlgMismatch {
                alg: name.to_string(),
                kty: kty.clone(),
            })?,
            (None, None) if kty == "EC" => Algorithm::ES256,
            (None, None) => Algorithm::RS256,
        };
        let mismatch = || KeyError::AlgMismatch {
            alg: format!("{alg:?}"),
            kty: kty.clone(),
        };
        if jwk_alg.is_some_and(|a| a != format!("{alg:?}")) {
            return Err(mismatch());
        }
        let d = b64(jwk, "d")?;
        let key = match kty.as_str() {
            "RSA" => {
                if !matches!(alg, Algorithm::RS256 | Algorithm::PS256) {
                    return Err(mismatch());
                }
                rsa_key(jwk, &d)?
            }
            "EC" => {
                if alg != Algorithm::ES256 {
                    return Err(mismatch());
                }
                match jwk.get("crv").and_then(Value::as_str) {
                    Some("P-256") => {}
                    other => {
                        return Err(KeyError::Unsupported(format!(
                            "EC curve {}",
                            other.unwrap_or("(none)")
                        )));
                    }
                }
                ec_key(jwk, &d)?
            }
            other => return Err(KeyError::Unsupported(format!("type {other:?}"))),
        };
        let fingerprint = {
            use sha2::Digest;
            let raw = jwk.get("d").and_then(Value::as_str).unwrap_or_default();
            let digest = sha2::Sha256::digest(raw.as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        };
        let key = ClientKey {
            alg,
            kid: jwk.get("kid").and_then(Value::as_str).map(str::to_string),
            key: Arc::new(key),
            fingerprint,
        };
        // One signature now: a key that loads but cannot sign is a config error, not a 503 at the first call.
        let probe = AssertionClaims {
            iss: "probe",
            sub: "probe",
            aud: "probe",
            jti: "probe",
            iat: 0,
            exp: 0,
        };
        key.sign_claims(&probe)
            .map_err(|_| KeyError::Invalid(if kty == "EC" { "EC" } else { "RSA" }))?;
        Ok(key)
    }

    /// The signing algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The JWK's `kid`, sent in the assertion's header.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// SHA-256 (hex) of the JWK's `d` member as written (recognises a key published in this repository).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn sign_claims(&self, claims: &AssertionClaims<'_>) -> jsonwebtoken::errors::Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key)
    }
}

/// RSA: the JWK's parts, checked by aws-lc-rs, as the PKCS#8 PEM jsonwebtoken reads.
fn rsa_key(jwk: &Map<String, Value>, d: &[u8]) -> Result<EncodingKey, KeyError> {
    use aws_lc_rs::rsa::{KeyPair, KeyPairComponents, PublicKeyComponents};
    let n = b64(jwk, "n")?;
    let e = b64(jwk, "e")?;
    let (p, q, dp, dq, qi) = (
        b64(jwk, "p")?,
        b64(jwk, "q")?,
        b64(jwk, "dp")?,
        b64(jwk, "dq")?,
        b64(jwk, "qi")?,
    );
    let components = KeyPairComponents {
        public_key: PublicKeyComponents {
            n: n.as_slice(),
            e: e.as_slice(),
        },
        d,
        p: p.as_slice(),
        q: q.as_slice(),
        dP: dp.as_slice(),
        dQ: dq.as_slice(),
        qInv: qi.as_slice(),
    };
    let pair = KeyPair::from_components(&components).map_err(|_| KeyError::Invalid("RSA"))?;
    let der = pair.as_der().map_err(|_| KeyError::Invalid("RSA"))?;
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| KeyError::Invalid("RSA"))
}

/// EC P-256: the private scalar and the public point, checked by aws-lc-rs to belong together, as PKCS#8 DER.
fn ec_key(jwk: &Map<String, Value>, d: &[u8]) -> Result<EncodingKey, KeyError> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let (x, y) = (b64(jwk, "x")?, b64(jwk, "y")?);
    if x.len() != 32 || y.len() != 32 || d.len() != 32 {
        return Err(KeyError::Invalid("EC"));
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let pair =
        EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, d, &point)
            .map_err(|_| KeyError::Invalid("EC"))?;
    let der = pair.to_pkcs8v1().map_err(|_| KeyError::Invalid("EC"))?;
    Ok(EncodingKey::from_ec_der(der.as_ref()))
}

/// The claims of a client assertion (RFC 7523 3, OIDC Core 9).
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: u64,
    exp: u64,
}

/// What signs an assertion: the private key, or the client secret (HS256).
#[derive(Clone, Copy)]
pub enum Signer<'a> {
    /// `private_key_jwt`.
    Key(&'a ClientKey),
    /// `client_secret_jwt`.
    Secret(&'a Secret),
}

/// A client assertion for `client_id` calling `audience` (the URL of the endpoint called: the token endpoint for
/// grants, as Okta requires; oidc-provider also accepts it), issued at `now`, with `jti` (random, never reused).
pub fn assertion(
    signer: Signer<'_>,
    client_id: &str,
    audience: &str,
    jti: &str,
    now: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = AssertionClaims {
        iss: client_id,
        sub: client_id,
        aud: audience,
        jti,
        iat: now,
        exp: now.saturating_add(ASSERTION_LIFETIME_SECS),
    };
    match signer {
        Signer::Key(key) => key.sign_claims(&claims),
        Signer::Secret(secret) => jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.expose().as_bytes()),
        ),
    }
}

/// A fresh `jti`: 16 random bytes, base64url.
pub fn new_jti(rng: &dyn crate::rng::Rng) -> String {
    let mut buf = [0u8; 16];
    rng.fill(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::json;

    use super::*;
    use crate::rng::{SequenceRng, SystemRng};

    fn key_file(name: &str) -> String {
        let path = format!(
            "{}/tests/data/client-keys/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap()
    }

    fn public_key(text: &str) -> DecodingKey {
        let jwk: Value = serde_json::from_str(text).unwrap();
        let s = |m: &str| jwk[m].as_str().unwrap().to_string();
        match s("kty").as_str() {
            "RSA" => DecodingKey::from_rsa_components(&s("n"), &s("e")).unwrap(),
            _ => DecodingKey::from_ec_components(&s("x"), &s("y")).unwrap(),
        }
    }

    /// Verifies `jwt` with `key` for `alg` and audience `aud`; its header and claims.
    fn verify(jwt: &str, key: &DecodingKey, alg: Algorithm, aud: &str) -> (Header, Value) {
        let mut v = Validation::new(alg);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(jwt, key, &v).unwrap();
        (data.header, data.claims)
    }

    const TOKEN_URL: &str = "https://idp.test/oauth2/v1/token";

    #[test]
    fn private_key_jwt_assertions_verify_with_the_public_key() {
        for (file, alg) in [
            ("rsa", Algorithm::RS256),
            ("rsa", Algorithm::PS256),
            ("ec", Algorithm::ES256),
        ] {
            let text = key_file(file);
            let key = ClientKey::from_jwk(&text, Some(alg)).unwrap();
            let jwt = assertion(Signer::Key(&key), "svc", TOKEN_URL, "j-1", 1_000).unwrap();
            let (header, claims) = verify(&jwt, &public_key(&text), alg, TOKEN_URL);
            assert_eq!(header.alg, alg);
            let kid = if file == "ec" {
                "test-ec-1"
            } else {
                "test-rsa-1"
            };
            assert_eq!(header.kid.as_deref(), Some(kid));
            assert_eq!(
                claims,
                json!({"iss": "svc", "sub": "svc", "aud": TOKEN_URL, "jti": "j-1", "iat": 1000, "exp": 1060})
            );
            // another key's public half does not verify it
            let other = key_file("rsa-other");
            if alg != Algorithm::ES256 {
                let mut v = Validation::new(alg);
                v.set_audience(&[TOKEN_URL]);
                v.validate_exp = false;
                assert!(jsonwebtoken::decode::<Value>(&jwt, &public_key(&other), &v).is_err());
            }
        }
    }

    #[test]
    fn the_algorithm_defaults_to_the_jwk_alg_else_the_key_type() {
        let rsa = ClientKey::from_jwk(&key_file("rsa"), None).unwrap();
        assert_eq!(rsa.alg(), Algorithm::RS256);
        let ec = ClientKey::from_jwk(&key_file("ec"), None).unwrap();
        assert_eq!(ec.alg(), Algorithm::ES256);
        let mut jwk: Value = serde_json::from_str(&key_file("rsa")).unwrap();
        jwk["alg"] = json!("PS256");
        let ps = ClientKey::from_jwk(&jwk.to_string(), None).unwrap();
        assert_eq!(ps.alg(), Algorithm::PS256);
        // client_alg against the JWK's own alg
        let err = ClientKey::from_jwk(&jwk.to_string(), Some(Algorithm::RS256)).unwrap_err();
        assert!(matches!(err, KeyError::AlgMismatch { .. }), "{err}");
        // a JWKS holding one key is read as that key
        let jwks = json!({"keys": [serde_json::from_str::<Value>(&key_file("ec")).unwrap()]});
        assert_eq!(
            ClientKey::from_jwk(&jwks.to_string(), None).unwrap().kid(),
            Some("test-ec-1")
        );
        // so is a list of one (Kong's client_jwk)
        let list = json!([serde_json::from_str::<Value>(&key_file("ec")).unwrap()]);
        assert_eq!(
            ClientKey::from_jwk(&list.to_string(), None).unwrap().kid(),
            Some("test-ec-1")
        );
    }

    #[test]
    fn unusable_keys_are_refused_without_quoting_them() {
        let rsa: Value = serde_json::from_str(&key_file("rsa")).unwrap();
        let ec: Value = serde_json::from_str(&key_file("ec")).unwrap();
        let d = rsa["d"].as_str().unwrap().to_string();
        let without = |v: &Value, members: &[&str]| {
            let mut v = v.clone();
            for m in members {
                v.as_object_mut().unwrap().remove(*m);
            }
            v.to_string()
        };
        let public = without(&rsa, &["d", "p", "q", "dp", "dq", "qi"]);
        let cases: Vec<(String, Option<Algorithm>, &str)> = vec![
            ("not json".into(), None, "not a JWK"),
            ("[1]".into(), None, "not a JWK"),
            ("[{}, {}]".into(), None, "not a JWK"),
            (json!({"keys": []}).to_string(), None, "not a JWK"),
            (public, None, "public key"),
            (without(&ec, &["d"]), None, "public key"),
            (key_file("rsa"), Some(Algorithm::ES256), "does not fit"),
            (key_file("ec"), Some(Algorithm::RS256), "does not fit"),
            (without(&rsa, &["qi"]), None, "\"qi\""),
            (
                json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "d": "AA"}).to_string(),
                None,
                "unsupported",
            ),
            (
                json!({"kty": "OKP", "d": "AA"}).to_string(),
                None,
                "unsupported",
            ),
            (
                {
                    // the private exponent of another key: the parts do not belong together
                    let mut v = rsa.clone();
                    v["d"] =
                        serde_json::from_str::<Value>(&key_file("rsa-other")).unwrap()["d"].clone();
                    v.to_string()
                },
                None,
                "valid RSA",
            ),
            (
                {
                    let mut v = ec.clone();
                    v["x"] = rsa["e"].clone();
                    v.to_string()
                },
                None,
                "valid EC",
            ),
        ];
        for (text, alg, want) in cases {
            let err = ClientKey::from_jwk(&text, alg).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(!err.contains(&d[..16]), "{err}");
        }
    }

    #[test]
    fn client_secret_jwt_is_hs256_keyed_with_the_secret() {
        let secret = Secret::new("the-client-secret-0123456789abcdef");
        let jwt = assertion(Signer::Secret(&secret), "app", TOKEN_URL, "j-2", 50).unwrap();
        let key = DecodingKey::from_secret(secret.expose().as_bytes());
        let (header, claims) = verify(&jwt, &key, Algorithm::HS256, TOKEN_URL);
        assert_eq!(header.kid, None);
        assert_eq!(claims["iss"], "app");
        assert_eq!(claims["sub"], "app");
        assert_eq!(claims["exp"], 110);
        let wrong = DecodingKey::from_secret(b"another-secret");
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[TOKEN_URL]);
        v.validate_exp = false;
        assert!(jsonwebtoken::decode::<Value>(&jwt, &wrong, &v).is_err());
    }

    #[test]
    fn every_jti_is_new_and_comes_from_the_rng() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(new_jti(&SystemRng)));
        }
        let rng = SequenceRng::new(0);
        assert_eq!(new_jti(&rng), "AAECAwQFBgcICQoLDA0ODw");
        assert_ne!(new_jti(&rng), "AAECAwQFBgcICQoLDA0ODw");
    }

    #[test]
    fn the_key_never_debug_prints() {
        let text = key_file("rsa");
        let d: Value = serde_json::from_str(&text).unwrap();
        let d = d["d"].as_str().unwrap();
        let key = ClientKey::from_jwk(&text, None).unwrap();
        let shown = format!("{key:?}");
        assert!(
            shown.contains("RS256") && shown.contains("test-rsa-1"),
            "{shown}"
        );
        assert!(!shown.contains(&d[..16]), "{shown}");
    }
}
