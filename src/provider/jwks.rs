//! A provider's signing keys: parsed from a JWKS once, filtered to keys that may verify signatures.

use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, VerificationAlgorithm};
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use serde::Deserialize;

/// The asymmetric algorithms accepted in tokens. HMAC is never accepted: the JWKS is public.
pub const ALLOWED_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// aws-lc's verification parameters for a JWS algorithm (the same ones jsonwebtoken's aws-lc backend uses).
fn lc_params(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    if let Some(rsa) = rsa_params(alg) {
        return Some(rsa);
    }
    Some(match alg {
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

fn rsa_params(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The key parsed once per algorithm it may verify, so a signature check does not rebuild the key.
fn pre_parse(
    key: &DecodingKey,
    family: AlgorithmFamily,
    pinned: Option<Algorithm>,
) -> Vec<(Algorithm, sig::ParsedPublicKey)> {
    let algs: Vec<Algorithm> = match pinned {
        Some(a) => vec![a],
        None => family.algorithms().to_vec(),
    };
    algs.into_iter()
        .filter(|a| ALLOWED_ALGS.contains(a))
        .filter_map(|a| {
            let parsed = match key.kind() {
                DecodingKeyKind::RsaModulusExponent { n, e } => sig::RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .to_parsed_public_key(rsa_params(a)?)
                .ok()?,
                DecodingKeyKind::SecretOrDer(bytes) => {
                    sig::ParsedPublicKey::new(lc_params(a)?, bytes).ok()?
                }
            };
            Some((a, parsed))
        })
        .collect()
}

/// One key that may verify signatures.
pub struct VerifyKey {
    /// `kid`, when the JWKS gives one.
    pub kid: Option<String>,
    /// Key family (RSA, EC, OKP).
    pub family: AlgorithmFamily,
    /// The one algorithm the JWKS pins for this key, if any.
    pub alg: Option<Algorithm>,
    /// The key material.
    pub key: DecodingKey,
    /// The key parsed for each algorithm it may verify.
    parsed: Vec<(Algorithm, sig::ParsedPublicKey)>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether `signature` (raw bytes) signs `message` with `alg` under this key.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match self.parsed.iter().find(|(a, _)| *a == alg) {
            Some((_, key)) => key.verify_sig(message, signature).is_ok(),
            None => false,
        }
    }
}

/// The usable keys of one JWKS.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
}

/// Why a JWKS document was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON JWKS.
    #[error("not a JWKS document: {0}")]
    Malformed(String),
    /// No key in it can verify signatures.
    #[error("the JWKS has no usable signing key")]
    NoUsableKeys,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

fn key_alg(a: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

impl KeySet {
    /// Parses a JWKS, keeping only keys allowed to verify signatures with an asymmetric algorithm.
    pub fn parse(body: &[u8]) -> Result<KeySet, JwksError> {
        let raw: RawSet =
            serde_json::from_slice(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let mut keys = Vec::new();
        for v in raw.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            if let Some(k) = Self::usable(&jwk) {
                keys.push(Arc::new(k));
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(KeySet { keys })
    }

    fn usable(jwk: &Jwk) -> Option<VerifyKey> {
        let c = &jwk.common;
        if matches!(
            c.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        ) {
            return None;
        }
        if let Some(ops) = &c.key_operations
            && !ops.iter().any(|o| matches!(o, KeyOperations::Verify))
        {
            return None;
        }
        let alg = match &c.key_algorithm {
            Some(a) => Some(key_alg(a)?),
            None => None,
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let family = key.family();
        if family == AlgorithmFamily::Hmac || alg.is_some_and(|a| a.family() != family) {
            return None;
        }
        let parsed = pre_parse(&key, family, alg);
        if parsed.is_empty() {
            return None;
        }
        Some(VerifyKey {
            kid: c.key_id.clone(),
            family,
            alg,
            key,
            parsed,
        })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys that may verify a token with this header: the key named by `kid` (if given), compatible with `alg`.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerifyKey>> {
        self.keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(|k| k.accepts(alg))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn jwks(keys: serde_json::Value) -> Vec<u8> {
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn filters_unusable_keys() {
        let set = KeySet::parse(&jwks(serde_json::json!([
            {"kty": "RSA", "kid": "sig", "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "weird", "kid": "x"}
        ])))
        .unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.has_kid("sig"));
        assert_eq!(set.candidates(Some("sig"), Algorithm::RS256).len(), 1);
        assert!(
            set.candidates(Some("sig"), Algorithm::RS384).is_empty(),
            "alg pinned by the JWKS"
        );
        assert!(set.candidates(Some("sig"), Algorithm::ES256).is_empty());
        assert!(
            set.candidates(Some("sig"), Algorithm::HS256).is_empty(),
            "no alg confusion"
        );
        assert!(set.candidates(Some("other"), Algorithm::RS256).is_empty());
        assert_eq!(set.candidates(None, Algorithm::RS256).len(), 1);
    }

    #[test]
    fn refuses_empty_and_garbage() {
        assert!(matches!(
            KeySet::parse(b"not json"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            KeySet::parse(&jwks(serde_json::json!([]))),
            Err(JwksError::NoUsableKeys)
        ));
        assert!(matches!(
            KeySet::parse(&jwks(serde_json::json!([{"kty": "oct", "k": "c2VjcmV0"}]))),
            Err(JwksError::NoUsableKeys)
        ));
    }
}
