//! The I/O seam to identity providers: [`IdpClient`] is the only thing that talks to an IdP (discovery, JWKS,
//! token, introspection, revocation and userinfo calls); [`ReqwestIdp`] does it over HTTP, [`super::fake::FakeIdp`] in
//! memory for tests. Metrics and JSON parsing stay above the seam, in [`super::Provider`].

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use url::Url;

use super::IdpError;
use crate::config::{Secret, TokenEndpointAuth};

/// Largest IdP answer we read (discovery, JWKS, token, introspection).
const MAX_BODY: usize = 1024 * 1024;

/// Which IdP endpoint a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The discovery document (GET).
    Discovery,
    /// The signing keys (GET).
    Jwks,
    /// The token endpoint (POST): every grant.
    Token,
    /// RFC 7662 introspection (POST).
    Introspection,
    /// RFC 7009 revocation (POST).
    Revocation,
    /// OpenID Connect userinfo (GET with the caller's bearer token).
    Userinfo,
}

impl Endpoint {
    /// Every endpoint kind.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Discovery,
        Endpoint::Jwks,
        Endpoint::Token,
        Endpoint::Introspection,
        Endpoint::Revocation,
        Endpoint::Userinfo,
    ];

    /// The name in errors, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery",
            Endpoint::Jwks => "jwks",
            Endpoint::Token => "token",
            Endpoint::Introspection => "introspection",
            Endpoint::Revocation => "revocation",
            Endpoint::Userinfo => "userinfo",
        }
    }
}

/// How a client proves who it is in one POST (the assertion is made above the seam, where the clock and the
/// randomness are).
#[derive(Clone, Copy)]
pub enum Proof<'a> {
    /// `Authorization: Basic` with the secret (RFC 6749 2.3.1).
    Basic(&'a Secret),
    /// `client_id` and `client_secret` in the form body.
    Post(&'a Secret),
    /// `client_assertion_type` and `client_assertion` (a signed JWT, RFC 7523) in the form body; no secret sent.
    Assertion(&'a str),
}

impl Proof<'_> {
    /// The method this proof is sent with (an assertion: either JWT method, both look alike on the wire).
    pub fn method(&self) -> TokenEndpointAuth {
        match self {
            Proof::Basic(_) => TokenEndpointAuth::ClientSecretBasic,
            Proof::Post(_) => TokenEndpointAuth::ClientSecretPost,
            Proof::Assertion(_) => TokenEndpointAuth::PrivateKeyJwt,
        }
    }
}

/// A client at the provider (this service's own, or a caller's in the client credentials grant), and its proof.
#[derive(Clone, Copy)]
pub struct ClientAuth<'a> {
    /// `client_id`.
    pub id: &'a str,
    /// The secret or the assertion.
    pub proof: Proof<'a>,
}

impl fmt::Debug for ClientAuth<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("id", &self.id)
            .field("method", &self.proof.method())
            .finish_non_exhaustive()
    }
}

/// An IdP's answer: the HTTP status and the body (at most 1 MiB).
pub type Reply = (u16, Vec<u8>);

/// A call in flight: the answer, or why there is none.
pub type Pending<'a> = BoxFuture<'a, Result<Reply, IdpError>>;

/// Where a call goes: the endpoint kind, its URL, and how long to wait for the answer (the provider's
/// `http_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The kind of endpoint (errors and metrics name it).
    pub endpoint: Endpoint,
    /// Its URL.
    pub url: &'a Url,
    /// The whole call's time limit.
    pub timeout: Duration,
}

/// What a POST sends: the form fields and this service's client authentication. No `Debug`: the fields hold
/// tokens and codes.
#[derive(Clone, Copy)]
pub struct Form<'a> {
    /// The fields, in order, without the client authentication.
    pub fields: &'a [(&'a str, &'a str)],
    /// Who we are at the provider.
    pub client: ClientAuth<'a>,
}

/// Calls to identity providers. An answer is the status and the body, whatever the status; a transport failure
/// (connect, timeout, reset) is [`IdpError::Unreachable`] and a body over the size cap [`IdpError::Garbage`].
/// Implementations never log a form, a token or a secret.
pub trait IdpClient: Send + Sync + fmt::Debug {
    /// GETs a JSON document (discovery or JWKS).
    fn get<'a>(&'a self, to: Target<'a>) -> Pending<'a>;

    /// POSTs a form (token, introspection or revocation) with client authentication.
    fn post_form<'a>(&'a self, to: Target<'a>, form: Form<'a>) -> Pending<'a>;

    /// GETs a resource with `Authorization: Bearer <token>` (RFC 6750 2.1; the userinfo endpoint), no client
    /// authentication. The token is never logged.
    fn get_bearer<'a>(&'a self, to: Target<'a>, token: &'a str) -> Pending<'a>;
}

/// The production [`IdpClient`]: one `reqwest::Client` for every provider of the process (no redirects, bounded
/// connect time, our user agent), `Accept: application/json`, the caller's timeout and the size cap.
#[derive(Debug, Clone)]
pub struct ReqwestIdp {
    http: reqwest::Client,
}

impl Default for ReqwestIdp {
    fn default() -> Self {
        Self::new()
    }
}

impl ReqwestIdp {
    /// The process's HTTP client for identity providers.
    pub fn new() -> Self {
        ReqwestIdp {
            http: http_client(),
        }
    }

    /// Sends one request with the target's timeout; the status and the (capped) body.
    async fn send(to: Target<'_>, req: reqwest::RequestBuilder) -> Result<Reply, IdpError> {
        let endpoint = to.endpoint.as_str();
        let resp = req
            .header(http::header::ACCEPT, "application/json")
            .timeout(to.timeout)
            .send()
            .await
            .map_err(|e| IdpError::Unreachable {
                endpoint,
                reason: transport_reason(&e),
            })?;
        let status = resp.status().as_u16();
        Ok((status, read_capped(resp, endpoint).await?))
    }
}

impl IdpClient for ReqwestIdp {
    fn get<'a>(&'a self, to: Target<'a>) -> Pending<'a> {
        Box::pin(Self::send(to, self.http.get(to.url.clone())))
    }

    fn get_bearer<'a>(&'a self, to: Target<'a>, token: &'a str) -> Pending<'a> {
        let req = self
            .http
            .get(to.url.clone())
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        Box::pin(Self::send(to, req))
    }

    fn post_form<'a>(&'a self, to: Target<'a>, form: Form<'a>) -> Pending<'a> {
        let client = form.client;
        let mut fields: Vec<(&str, &str)> = form.fields.to_vec();
        let mut req = self.http.post(to.url.clone());
        match client.proof {
            Proof::Basic(secret) => {
                // RFC 6749 2.3.1: form-encode id and secret, then base64 the pair.
                use base64::Engine;
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(client.id), enc(secret.expose()));
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                req = req.header(http::header::AUTHORIZATION, format!("Basic {b64}"));
            }
            Proof::Post(secret) => {
                fields.push(("client_id", client.id));
                fields.push(("client_secret", secret.expose()));
            }
            Proof::Assertion(jwt) => {
                // RFC 7523 2.2: the assertion names the client (iss, sub); client_id is optional and left out.
                fields.push(("client_assertion_type", super::assertion::ASSERTION_TYPE));
                fields.push(("client_assertion", jwt));
            }
        }
        Box::pin(Self::send(to, req.form(&fields)))
    }
}

/// The process's one HTTP client for identity providers: no redirects, bounded connect time.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        // Shorter than the keep-alive of common IdP servers (Node's 5 s default among them): a connection the server
        // is closing is never picked for the next call (a token exchange failed that way, "request failed", 503).
        .pool_idle_timeout(Duration::from_secs(4))
        .user_agent(concat!("oidc-authz/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Reads a response body up to [`MAX_BODY`].
async fn read_capped(
    mut resp: reqwest::Response,
    endpoint: &'static str,
) -> Result<Vec<u8>, IdpError> {
    if resp.content_length().is_some_and(|l| l as usize > MAX_BODY) {
        return Err(IdpError::Garbage {
            endpoint,
            reason: "answer too large".into(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| IdpError::Unreachable {
        endpoint,
        reason: transport_reason(&e),
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(IdpError::Garbage {
                endpoint,
                reason: "answer too large".into(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short reason for a transport failure, without URLs' query strings.
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_body() || e.is_decode() {
        "bad response body".into()
    } else {
        "request failed".into()
    }
}
