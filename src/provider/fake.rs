//! The test double of [`IdpClient`]: an in-memory IdP with an answer per [`Endpoint`] (canned, computed from the
//! call, or a transport failure), a count of the calls per endpoint and the last call of each, so tests of the
//! core need no network. Compiled always (small, no I/O); production code never builds one.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use url::Url;

use super::IdpError;
use super::client::{Endpoint, Form, IdpClient, Pending, Proof, Reply, Target};
use crate::config::TokenEndpointAuth;

/// What the fake answers one call.
#[derive(Debug, Clone)]
pub enum FakeAnswer {
    /// An HTTP answer.
    Reply {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: Vec<u8>,
    },
    /// A transport failure ([`IdpError::Unreachable`], as a refused connection).
    Unreachable,
}

impl FakeAnswer {
    /// `status` with `body` as JSON.
    pub fn json(status: u16, body: Value) -> Self {
        FakeAnswer::Reply {
            status,
            body: body.to_string().into_bytes(),
        }
    }
}

/// The client authentication a POST carried (secret in clear: this is a test double; `Debug` hides it).
#[derive(Clone)]
pub struct SentClient {
    /// `client_id`.
    pub id: String,
    /// `client_secret` (empty when an assertion was sent).
    pub secret: String,
    /// HTTP Basic, form fields, or an assertion (shown as `PrivateKeyJwt` for either JWT method).
    pub method: TokenEndpointAuth,
    /// `client_assertion`, when one was sent.
    pub assertion: Option<String>,
}

impl fmt::Debug for SentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentClient")
            .field("id", &self.id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// One call the fake received. The form holds tokens, codes and verifiers in clear; `Debug` shows field names
/// only.
#[derive(Clone)]
pub struct Call {
    /// Where it went.
    pub url: Url,
    /// The form fields of a POST, in order (empty for a GET), without the client authentication.
    pub form: Vec<(String, String)>,
    /// The client authentication of a POST.
    pub client: Option<SentClient>,
    /// The bearer token of a GET with one (userinfo).
    pub bearer: Option<String>,
}

impl Call {
    /// The first value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<&str> = self.form.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Call")
            .field("url", &self.url.as_str())
            .field("fields", &fields)
            .field("client", &self.client)
            .field("bearer", &self.bearer.is_some())
            .finish()
    }
}

/// How the fake answers one endpoint kind.
type Responder = Arc<dyn Fn(&Call) -> FakeAnswer + Send + Sync>;

#[derive(Default)]
struct State {
    answers: HashMap<Endpoint, Responder>,
    calls: HashMap<Endpoint, usize>,
    last: HashMap<Endpoint, Call>,
}

/// An in-memory IdP. Every endpoint answers 404 until told otherwise; answers can change while the fake is in
/// use (it is shared as an `Arc`). Each call is counted and recorded before it is answered.
#[derive(Default)]
pub struct FakeIdp {
    state: Mutex<State>,
}

impl fmt::Debug for FakeIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        let mut calls: Vec<(&str, usize)> =
            state.calls.iter().map(|(e, n)| (e.as_str(), *n)).collect();
        calls.sort_unstable();
        f.debug_struct("FakeIdp").field("calls", &calls).finish()
    }
}

impl FakeIdp {
    /// A fake where every endpoint answers 404.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake whose discovery document names `issuer` and endpoints under it ([`FakeIdp::discovery_document`]),
    /// with an empty JWKS; token, introspection, revocation and userinfo answer 404 until told otherwise.
    pub fn for_issuer(issuer: &str) -> Self {
        let fake = Self::new();
        fake.answer(Endpoint::Discovery, 200, Self::discovery_document(issuer));
        fake.jwks(Vec::new());
        fake
    }

    /// A discovery document for `issuer`: `{issuer}/keys`, `/token`, `/introspect`, `/authorize`, `/logout`,
    /// `/revoke`, `/userinfo`, and both client authentication methods.
    pub fn discovery_document(issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/keys"),
            "token_endpoint": format!("{issuer}/token"),
            "introspection_endpoint": format!("{issuer}/introspect"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "end_session_endpoint": format!("{issuer}/logout"),
            "revocation_endpoint": format!("{issuer}/revoke"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, `endpoint` answers `status` with `body` as JSON.
    pub fn answer(&self, endpoint: Endpoint, status: u16, body: Value) {
        let answer = FakeAnswer::json(status, body);
        self.answer_with(endpoint, move |_| answer.clone());
    }

    /// From now on, `endpoint` answers what `f` makes of each call (say, per grant type or code).
    pub fn answer_with(
        &self,
        endpoint: Endpoint,
        f: impl Fn(&Call) -> FakeAnswer + Send + Sync + 'static,
    ) {
        self.lock().answers.insert(endpoint, Arc::new(f));
    }

    /// From now on, `endpoint` cannot be reached (a transport failure).
    pub fn unreachable(&self, endpoint: Endpoint) {
        self.answer_with(endpoint, |_| FakeAnswer::Unreachable);
    }

    /// From now on, the JWKS holds `keys` (JWKs as JSON).
    pub fn jwks(&self, keys: Vec<Value>) {
        self.answer(Endpoint::Jwks, 200, json!({ "keys": keys }));
    }

    /// How many calls `endpoint` has received.
    pub fn calls(&self, endpoint: Endpoint) -> usize {
        self.lock().calls.get(&endpoint).copied().unwrap_or(0)
    }

    /// The last call `endpoint` received.
    pub fn last(&self, endpoint: Endpoint) -> Option<Call> {
        self.lock().last.get(&endpoint).cloned()
    }

    /// Records the call and answers it (the responder runs outside the lock, so it may use the fake).
    fn serve(&self, endpoint: Endpoint, call: Call) -> Result<Reply, IdpError> {
        let responder = {
            let mut state = self.lock();
            *state.calls.entry(endpoint).or_insert(0) += 1;
            state.last.insert(endpoint, call.clone());
            state.answers.get(&endpoint).cloned()
        };
        let answer = match responder {
            Some(f) => f(&call),
            None => FakeAnswer::json(404, json!({ "error": "not_found" })),
        };
        match answer {
            FakeAnswer::Reply { status, body } => Ok((status, body)),
            FakeAnswer::Unreachable => Err(IdpError::Unreachable {
                endpoint: endpoint.as_str(),
                reason: "connection failed".into(),
            }),
        }
    }
}

impl IdpClient for FakeIdp {
    fn get<'a>(&'a self, to: Target<'a>) -> Pending<'a> {
        let call = Call {
            url: to.url.clone(),
            form: Vec::new(),
            client: None,
            bearer: None,
        };
        Box::pin(std::future::ready(self.serve(to.endpoint, call)))
    }

    fn get_bearer<'a>(&'a self, to: Target<'a>, token: &'a str) -> Pending<'a> {
        let call = Call {
            url: to.url.clone(),
            form: Vec::new(),
            client: None,
            bearer: Some(token.to_string()),
        };
        Box::pin(std::future::ready(self.serve(to.endpoint, call)))
    }

    fn post_form<'a>(&'a self, to: Target<'a>, form: Form<'a>) -> Pending<'a> {
        let client = form.client;
        let call = Call {
            url: to.url.clone(),
            form: form
                .fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client: Some(SentClient {
                id: client.id.to_string(),
                secret: match client.proof {
                    Proof::Basic(s) | Proof::Post(s) => s.expose().to_string(),
                    Proof::Assertion(_) => String::new(),
                },
                method: client.proof.method(),
                assertion: match client.proof {
                    Proof::Assertion(jwt) => Some(jwt.to_string()),
                    _ => None,
                },
            }),
            bearer: None,
        };
        Box::pin(std::future::ready(self.serve(to.endpoint, call)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::provider::ClientAuth;

    #[tokio::test]
    async fn answers_per_endpoint_counts_and_records_without_showing_secrets() {
        let fake = FakeIdp::for_issuer("https://idp.test");
        let url = Url::parse("https://idp.test/token").unwrap();
        let to = |endpoint| Target {
            endpoint,
            url: &url,
            timeout: std::time::Duration::from_secs(1),
        };
        fake.answer_with(Endpoint::Token, |call| match call.field("grant_type") {
            Some("client_credentials") => FakeAnswer::json(200, json!({"access_token": "a"})),
            _ => FakeAnswer::json(400, json!({"error": "unsupported_grant_type"})),
        });
        let secret = Secret::new("s3cret");
        let form = |fields| Form {
            fields,
            client: ClientAuth {
                id: "app",
                proof: Proof::Post(&secret),
            },
        };
        let cc = [("grant_type", "client_credentials"), ("code", "c0de")];
        let (status, _) = fake
            .post_form(to(Endpoint::Token), form(&cc))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let other = [("grant_type", "x")];
        let (status, _) = fake
            .post_form(to(Endpoint::Token), form(&other))
            .await
            .unwrap();
        assert_eq!(status, 400);
        assert_eq!(fake.calls(Endpoint::Token), 2);
        assert_eq!(fake.calls(Endpoint::Introspection), 0);
        let (status, _) = fake.get(to(Endpoint::Discovery)).await.unwrap();
        assert_eq!(status, 200);
        let (status, _) = fake
            .post_form(to(Endpoint::Revocation), form(&cc))
            .await
            .unwrap();
        assert_eq!(status, 404, "not told: 404");

        let last = fake.last(Endpoint::Revocation).unwrap();
        assert_eq!(last.field("code"), Some("c0de"));
        let sent = last.client.clone().unwrap();
        assert_eq!((sent.id.as_str(), sent.secret.as_str()), ("app", "s3cret"));
        let shown = format!("{last:?} {fake:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("c0de"),
            "{shown}"
        );
        assert!(
            shown.contains("code") && shown.contains("\"token\", 2"),
            "{shown}"
        );

        fake.unreachable(Endpoint::Jwks);
        let e = fake.get(to(Endpoint::Jwks)).await.unwrap_err();
        assert!(matches!(
            e,
            IdpError::Unreachable {
                endpoint: "jwks",
                ..
            }
        ));
    }
}
