//! What authenticating a request yields, whatever the method: an [`Identity`], a browser [`Redirect`], or a
//! [`Refusal`]; and [`Refusal::deny`], the one mapping from a refusal to the [`Deny`] the client gets.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{AuthMethod, ErrorAnswers, Policy};
use crate::decision::{Answered, Deny, DenyStatus, Redirect};
use crate::flow::bearer::Verified;
use crate::login::OpenedSession;
use crate::provider::IdpError;

/// A request that authenticated: how, as whom, and what it carries upstream. `Debug` shows no token or cookie.
pub struct Identity {
    /// The method that authenticated it.
    pub method: AuthMethod,
    /// Where its verified claims live.
    pub claims: Claims,
    /// The `Authorization` value to send upstream, `Bearer` and a token (the client-credentials grant's token, a
    /// session's access token with `upstream_access_token`): made once, moved into the header, or written again
    /// in the policy's `upstream_access_token_header` (the token after `Bearer `).
    pub upstream_authorization: Option<String>,
    /// A session's ID token, for the policy's `upstream_id_token_header`.
    pub id_token: Option<String>,
    /// `Set-Cookie` values for the client (a refreshed session, a last-seen update).
    pub set_cookies: Vec<String>,
    /// The provider that verified (or answered for) the token: its issuer stands in when the claims name none (a
    /// userinfo answer, which OpenID Connect does not make carry `iss`), for the metadata's `iss` and the decision
    /// log, so they show the issuer actually used (a policy may list several). The claims stay as the provider
    /// gave them.
    pub vouched_by: Option<Arc<crate::provider::Provider>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("method", &self.method)
            .field(
                "upstream_authorization",
                &self.upstream_authorization.is_some(),
            )
            .field("id_token", &self.id_token.is_some())
            .field("set_cookies", &self.set_cookies.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The verified issuer: the claims' `iss`, else the issuer that vouched for a token whose claims name none.
    pub fn iss(&self) -> Option<&str> {
        self.claims()
            .get("iss")
            .and_then(|v| v.as_str())
            .or_else(|| Some(self.vouched_by.as_ref()?.config.issuer.as_str()))
    }

    /// The verified claims, for access control and headers.
    pub fn claims(&self) -> &Map<String, Value> {
        match &self.claims {
            Claims::Token(v) => &v.claims,
            Claims::Session(s) => &s.claims,
        }
    }

    /// The `sub` claim, for the log line.
    pub fn sub(&self) -> Option<String> {
        self.claims()
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// Where an identity's claims come from (both cached and shared, never copied per request).
#[derive(Debug)]
pub enum Claims {
    /// A verified or introspected token.
    Token(Arc<Verified>),
    /// An opened session.
    Session(Arc<OpenedSession>),
}

/// What authenticating a request led to, when it is not a refusal.
#[derive(Debug)]
pub enum Authenticated {
    /// The request goes on to access control.
    Identity(Identity),
    /// The browser goes elsewhere (to log in, back after the callback, to log out).
    Redirect(Redirect),
    /// The request is answered here, successfully, and goes nowhere upstream (a back-channel logout).
    Answered(Answered),
}

/// Why a request is refused, with the public description the client reads (always one of our own texts, never
/// client input, a token or a secret). Every auth method answers with one; [`Refusal::deny`] alone turns it into
/// the `Deny`. `Debug` shows no cookie.
pub struct Refusal {
    /// The kind, which fixes the status and the challenge.
    pub kind: RefusalKind,
    /// The public reason.
    pub description: String,
    /// The method that refused (for the log line and the metrics), when one did.
    pub method: Option<AuthMethod>,
    /// Seconds for `retry-after`.
    pub retry_after: Option<u64>,
    /// `Set-Cookie` values for the client (clearing a dead session or login).
    pub set_cookies: Vec<String>,
}

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusal")
            .field("kind", &self.kind)
            .field("description", &self.description)
            .field("method", &self.method)
            .field("retry_after", &self.retry_after)
            .field("set_cookies", &self.set_cookies.len())
            .finish()
    }
}

/// The kinds of refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// 401: no credentials, or credentials that do not authenticate; the OAuth error code (`invalid_token`,
    /// `invalid_client`), with the challenges of the policy's methods.
    Unauthenticated(&'static str),
    /// 401 for a browser whose login failed at the callback: an HTML page, no challenge.
    LoginFailed(&'static str),
    /// 401 `invalid_token`: a login is needed; the URL to log in at joins the challenge when the policy can log in.
    LoginRequired(Option<String>),
    /// 400 `invalid_request`: a message we must read does not verify (a back-channel logout token).
    BadRequest,
    /// 403 `insufficient_scope`: authenticated, but the access rules (or the IdP, for a scope) refuse.
    Insufficient,
    /// 403 `access_denied`: no policy for the route, or an action this request may not take.
    Forbidden,
    /// 503: the identity provider is needed and is unavailable, too slow or busy.
    Unavailable,
}

impl Refusal {
    fn new(kind: RefusalKind, description: impl Into<String>) -> Self {
        Refusal {
            kind,
            description: description.into(),
            method: None,
            retry_after: None,
            set_cookies: Vec::new(),
        }
    }

    /// 401 with `error` and the policy's challenges.
    pub fn unauthenticated(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(RefusalKind::Unauthenticated(error), description)
    }

    /// 401: the login failed at the callback (`error`: `access_denied` or `invalid_request`).
    pub fn login_failed(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(RefusalKind::LoginFailed(error), description)
    }

    /// 401: log in first (at `login_uri`, when the policy can log in).
    pub fn login_required(login_uri: Option<String>) -> Self {
        Self::new(RefusalKind::LoginRequired(login_uri), "login required")
    }

    /// 400 `invalid_request`.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Self::new(RefusalKind::BadRequest, description)
    }

    /// 403 `insufficient_scope`.
    pub fn insufficient(description: impl Into<String>) -> Self {
        Self::new(RefusalKind::Insufficient, description)
    }

    /// 403 `access_denied`.
    pub fn forbidden(description: impl Into<String>) -> Self {
        Self::new(RefusalKind::Forbidden, description)
    }

    /// 503 with `description`.
    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new(RefusalKind::Unavailable, description)
    }

    /// 503 for an IdP outage, logged here (the provider and the error, never a token): never an allow, never a
    /// gRPC error.
    pub fn idp(provider: &str, e: &IdpError) -> Self {
        tracing::warn!(provider = %provider, error = %e, "identity provider needed and unavailable");
        Self::unavailable("the identity provider is unavailable")
    }

    /// The same refusal, attributed to `method`.
    pub fn during(mut self, method: AuthMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The same refusal, telling the client to retry after `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The same refusal, with these `Set-Cookie` values.
    pub fn with_cookies(mut self, set_cookies: Vec<String>) -> Self {
        self.set_cookies = set_cookies;
        self
    }

    /// The answer the client gets. The policy (when one was selected) names the realm and, for a 401, decides
    /// the challenges: `Basic` when it accepts client credentials, `Bearer` when it accepts tokens or nothing else.
    ///
    /// Unless the policy says `display_errors = true`, a 401 or 403 tells the client only the policy's
    /// `unauthorized_error_message` / `forbidden_error_message` (Kong's "Unauthorized" / "Forbidden", also when no
    /// policy was selected): which check failed goes to the log line only. The status, the `error` code and the
    /// challenges stay; 400 and 503 answers keep their texts (they name no check).
    pub fn deny(self, policy: Option<&Policy>) -> Deny {
        let defaults = ErrorAnswers::default();
        let answers = policy.map_or(&defaults, |p| &p.error_answers);
        let deny = self.detailed_deny(policy);
        match deny.status {
            _ if answers.display => deny,
            DenyStatus::Unauthorized => deny.hiding_reason(&answers.unauthorized),
            DenyStatus::Forbidden => deny.hiding_reason(&answers.forbidden),
            DenyStatus::BadRequest | DenyStatus::Unavailable => deny,
        }
    }

    /// The answer with the full reason (`display_errors = true`).
    fn detailed_deny(self, policy: Option<&Policy>) -> Deny {
        let realm = policy.map_or("oidc-authz", |p| p.name.as_str());
        let mut deny = match self.kind {
            RefusalKind::Unauthenticated(error) => {
                with_challenges(Deny::unauthorized(realm, error, self.description), policy)
            }
            RefusalKind::LoginRequired(login_uri) => {
                let mut deny = with_challenges(
                    Deny::unauthorized(realm, "invalid_token", self.description),
                    policy,
                );
                if let Some(url) = login_uri {
                    let url: String = url.chars().filter(|c| *c != '"' && *c != '\\').collect();
                    deny.www_authenticate = deny
                        .www_authenticate
                        .map(|w| format!("{w}, login_uri=\"{url}\""));
                }
                deny
            }
            RefusalKind::LoginFailed(error) => {
                let page = crate::login::error_page(&self.description);
                let mut deny = Deny::unauthorized(realm, error, self.description);
                deny.www_authenticate = None;
                deny.page = Some(page);
                deny
            }
            RefusalKind::BadRequest => Deny::bad_request(self.description),
            RefusalKind::Insufficient => Deny::insufficient(realm, self.description),
            RefusalKind::Forbidden => Deny::forbidden("access_denied", self.description),
            RefusalKind::Unavailable => Deny::unavailable(self.description),
        };
        deny.retry_after = self
            .retry_after
            .map(|s| u16::try_from(s).unwrap_or(u16::MAX));
        deny.set_cookies = self.set_cookies;
        deny
    }
}

/// A 401's challenges for the policy: `Basic` for client credentials, joined by the `Bearer` one when the policy
/// also takes tokens.
fn with_challenges(mut deny: Deny, policy: Option<&Policy>) -> Deny {
    let Some(policy) = policy else { return deny };
    if policy.allows(AuthMethod::ClientCredentials) {
        let basic = format!("Basic realm=\"{}\"", policy.name);
        let token_methods = crate::flow::takes_tokens(policy);
        deny.www_authenticate = Some(match deny.www_authenticate.take() {
            Some(bearer) if token_methods => format!("{basic}, {bearer}"),
            _ => basic,
        });
    }
    deny
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Authorization;

    fn policy(extra: &str) -> Policy {
        let cfg = crate::config::Config::from_toml(&format!(
            r#"
[providers.p]
issuer = "https://idp.example.com"
audiences = ["api"]
[policies.api]
provider = "p"
auth_methods = ["bearer", "client_credentials"]
{extra}
"#
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        cfg.policies[0].clone()
    }

    /// `display_errors = false` (the default) hides which check failed from 401 and 403 answers, keeps it for the
    /// log line, and leaves 400 and 503 answers alone; the messages replace the description.
    #[test]
    fn denies_hide_the_reason_unless_display_errors() {
        let quiet = policy("");
        let d = Refusal::unauthenticated("invalid_client", "the client secret is wrong")
            .deny(Some(&quiet));
        assert_eq!((d.status.code(), d.error), (401, "invalid_client"));
        assert_eq!(d.description, "Unauthorized");
        assert_eq!(d.log_reason(), "the client secret is wrong");
        let www = d.www_authenticate.unwrap();
        assert!(
            www.starts_with("Basic realm=\"api\", Bearer realm=\"api\""),
            "{www}"
        );
        assert!(!www.contains("secret"), "{www}");
        let d = Refusal::insufficient("the token does not meet the scopes requirement")
            .deny(Some(&quiet));
        assert_eq!(
            (d.status.code(), d.description.as_str()),
            (403, "Forbidden")
        );
        // no policy selected: Kong's defaults
        let d = Refusal::forbidden("no policy is configured for this route").deny(None);
        assert_eq!(d.description, "Forbidden");
        assert_eq!(d.log_reason(), "no policy is configured for this route");
        for kept in [
            Refusal::unavailable("the identity provider is unavailable"),
            Refusal::bad_request("the logout token was already used"),
        ] {
            let text = kept.description.clone();
            let d = kept.deny(Some(&quiet));
            assert_eq!(
                (d.description.as_str(), d.log_reason()),
                (text.as_str(), text.as_str())
            );
        }

        let custom = policy(
            "unauthorized_error_message = \"Please sign in\"\nforbidden_error_message = \"Not here\"",
        );
        let d = Refusal::login_required(Some("https://app/x".into())).deny(Some(&custom));
        assert_eq!(d.description, "Please sign in");
        assert!(
            d.www_authenticate
                .unwrap()
                .ends_with("error_description=\"Please sign in\", login_uri=\"https://app/x\"")
        );
        let d = Refusal::insufficient("x").deny(Some(&custom));
        assert_eq!(d.description, "Not here");

        let loud = policy("display_errors = true");
        let d =
            Refusal::unauthenticated("invalid_token", "the token has expired").deny(Some(&loud));
        assert_eq!(d.description, "the token has expired");
        assert!(d.reason.is_none());
        assert!(
            d.www_authenticate
                .unwrap()
                .contains("the token has expired")
        );
    }

    /// The decision's log line carries the full reason the client no longer reads.
    #[test]
    fn the_log_line_keeps_the_hidden_reason() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let deny = Refusal::insufficient("the token carries the forbidden claim act")
            .deny(Some(&policy("")));
        assert_eq!(deny.description, "Forbidden");
        let metrics = crate::telemetry::Metrics::new();
        let unselected = metrics.policy_counters("-");
        let req = crate::request::get_with_headers(&[]);
        let view = crate::request::CheckView::new(&req);
        tracing::subscriber::with_default(subscriber, || {
            let mut record = crate::telemetry::CheckRecord::start(&metrics, &unselected, &view);
            record.finish(
                &crate::decision::Decision::Deny(deny),
                Some(AuthMethod::Bearer),
                None,
            );
        });
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            line.contains("the token carries the forbidden claim act") && line.contains("deny_403"),
            "{line}"
        );
    }

    /// Debug output (a log line with `?`) never carries a token or a cookie value.
    #[test]
    fn debug_shows_no_token_or_cookie() {
        let id = Identity {
            method: AuthMethod::Session,
            claims: Claims::Token(Arc::new(Verified {
                claims: Map::new(),
                exp: 0,
            })),
            upstream_authorization: Some("Bearer secret-access-token".into()),
            id_token: Some("secret-id-token".into()),
            set_cookies: vec!["session=secret-cookie; Path=/".into()],
            vouched_by: None,
        };
        let refusal = Refusal::insufficient("no").with_cookies(id.set_cookies.clone());
        let auth = Authorization::Bearer("secret-bearer".into());
        for shown in [
            format!("{id:?}"),
            format!("{refusal:?}"),
            format!("{auth:?}"),
        ] {
            assert!(!shown.contains("secret"), "{shown}");
        }
    }
}
