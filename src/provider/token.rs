//! `token`: the token endpoint (RFC 6749 3.2) for every grant (authorization code, refresh, client credentials):
//! the grant POSTed with client authentication, its answer read into [`TokenResponse`] or a refusal, and the rule
//! ([`idp_unwell`]) that tells the provider's own trouble from a verdict on the request.

use serde::Deserialize;
use serde_json::Value;

use super::{Endpoint, IdpError, Provider, Who};
use crate::config::TokenEndpointAuth;

/// Whether an HTTP status from the provider says it is unwell (server trouble, rate limiting, a timeout) rather
/// than giving a verdict on the request: such an answer is an IdP failure (a 503, a failed call in the metrics),
/// never a refusal of the credentials or the token.
pub fn idp_unwell(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// `expires_in` when the answer has none, or none we can read (seconds).
const DEFAULT_EXPIRES_IN: u64 = 300;

/// A successful token answer (RFC 6749 5.1). No `Debug`: it holds tokens.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// The ID token (authorization code and refresh grants with `openid`).
    #[serde(default)]
    pub id_token: Option<String>,
    /// A refresh token, new or rotated.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The access token's lifetime as sent: a number, or a string some providers send.
    #[serde(default)]
    expires_in: Option<Value>,
}

impl TokenResponse {
    /// The access token's lifetime in seconds: `expires_in` as a whole number or a numeric string, else 300.
    pub fn expires_in(&self) -> u64 {
        match &self.expires_in {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(DEFAULT_EXPIRES_IN),
            Some(Value::String(s)) => s.parse().unwrap_or(DEFAULT_EXPIRES_IN),
            _ => DEFAULT_EXPIRES_IN,
        }
    }
}

/// What the token endpoint answered a grant.
pub enum TokenAnswer {
    /// 200: the tokens.
    Tokens(TokenResponse),
    /// Any other status that is not [`idp_unwell`]: the grant is refused.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code (RFC 6749 5.2); empty when the body has none.
        error: String,
    },
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

impl Provider {
    /// This service's own client at the provider: `client_id` with `client_secret`, or with the private key of
    /// `client_auth = "private_key_jwt"`; `None` when it cannot authenticate.
    pub fn own_client(&self) -> Option<Who<'_>> {
        let id = self.config.client_id.as_deref()?;
        let secret = self.config.client_secret.as_ref();
        let keyed = self.config.token_endpoint_auth_method
            == Some(TokenEndpointAuth::PrivateKeyJwt)
            && self.config.client_key.is_some();
        (secret.is_some() || keyed).then_some(Who::Own { id, secret })
    }

    /// POSTs one grant (`form`) to the token endpoint, authenticated as `client` (`None`: this service's own client
    /// is not configured, an error). A 200 gives the tokens and any other status a refusal, except that an
    /// unreachable or [`idp_unwell`] provider, or an answer that does not parse, is an error.
    pub async fn token_grant<'c>(
        &self,
        form: &[(&str, &str)],
        client: Option<impl Into<Who<'c>>>,
    ) -> Result<TokenAnswer, IdpError> {
        let meta = self.metadata().await?;
        let url = meta
            .token_endpoint
            .clone()
            .ok_or(IdpError::NoEndpoint("token_endpoint"))?;
        let client = client.ok_or(IdpError::NoEndpoint("client_id and client_secret"))?;
        let auth = self.token_auth(&meta);
        let (status, body) = self
            .post_form(Endpoint::Token, &url, form, client, auth)
            .await?;
        if status == 200 {
            return serde_json::from_slice(&body)
                .map(TokenAnswer::Tokens)
                .map_err(|e| IdpError::Garbage {
                    endpoint: "token",
                    reason: e.to_string(),
                });
        }
        if idp_unwell(status) {
            return Err(IdpError::Status {
                endpoint: "token",
                status,
            });
        }
        let error = serde_json::from_slice::<ErrorResponse>(&body)
            .map(|e| e.error)
            .unwrap_or_default();
        Ok(TokenAnswer::Refused { status, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwell_statuses() {
        for s in [500, 502, 503, 504, 599, 429, 408] {
            assert!(idp_unwell(s), "{s}");
        }
        for s in [200, 201, 302, 400, 401, 403, 404, 407, 409, 499] {
            assert!(!idp_unwell(s), "{s}");
        }
    }

    #[test]
    fn expires_in_is_a_number_or_a_numeric_string() {
        let read = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .map(|t| t.expires_in())
                .unwrap_or(0)
        };
        assert_eq!(read(r#"{"access_token": "a", "expires_in": 3600}"#), 3600);
        assert_eq!(read(r#"{"access_token": "a", "expires_in": "120"}"#), 120);
        for unusable in [r#""soon""#, "-1", "1.5", "null", "[60]"] {
            let json = format!(r#"{{"access_token": "a", "expires_in": {unusable}}}"#);
            assert_eq!(read(&json), 300, "{unusable}");
        }
        assert_eq!(read(r#"{"access_token": "a"}"#), 300);
    }
}
