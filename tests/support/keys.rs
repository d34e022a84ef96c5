//! Test signing keys: the PEM files in `tests/support/keys`, as keys the mock IdP publishes and signs with.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key the mock IdP publishes and signs with.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    pub fn load(file: &str, kid: &str, alg: Algorithm) -> Self {
        let pem = std::fs::read(format!(
            "{}/tests/support/keys/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let encoding = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                EncodingKey::from_rsa_pem(&pem).unwrap()
            }
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => panic!("not an asymmetric alg"),
        };
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        SigningKey {
            kid: kid.into(),
            alg,
            encoding,
            jwk,
        }
    }

    pub fn rsa1() -> Self {
        Self::load("rsa1.pem", "rsa1", Algorithm::RS256)
    }
    pub fn rsa2() -> Self {
        Self::load("rsa2.pem", "rsa2", Algorithm::RS256)
    }

    /// Signs claims with this key (header alg and kid from the key unless overridden).
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}
