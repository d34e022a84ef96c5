//! The answer to one Check (allow, deny, redirect) with the texts a deny carries (JSON body, challenge); no
//! protobuf here: [`crate::envoy`] encodes it for Envoy.

use http::HeaderName;

/// What to tell Envoy.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let the request through, with headers changed.
    Allow(Allow),
    /// Answer the client ourselves with an error.
    Deny(Deny),
    /// Send the browser elsewhere (login at the IdP, back to the app after the callback, logout).
    Redirect(Redirect),
    /// Answer the client ourselves with a success that goes nowhere upstream (the back-channel logout's 200).
    Answered(Answered),
}

/// A success Envoy answers itself, with an empty body and no caching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The HTTP status (2xx).
    pub status: u16,
}

/// A 302 answered by Envoy on our behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Absolute URL (the IdP) or an absolute path on the app's own origin.
    pub location: String,
    /// `Set-Cookie` header values.
    pub set_cookies: Vec<String>,
}

/// An allowed request: headers to set upstream and to strip, and metadata for Envoy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allow {
    /// Headers set upstream, overwriting any client-sent copy.
    pub set_headers: Vec<(HeaderName, String)>,
    /// Headers removed from the upstream request (configured header names with no value for this request).
    pub remove_headers: Vec<HeaderName>,
    /// Verified facts for `dynamic_metadata` (sub, iss, client_id, policy, auth_method, and consumer with
    /// `consumer_claim`).
    pub metadata: Vec<(&'static str, String)>,
    /// Headers added to the response the client gets (`Set-Cookie` of a refreshed session).
    pub response_headers: Vec<(&'static str, String)>,
    /// Query parameters removed from the path sent upstream (the `access_token` a token came in).
    pub remove_query_params: Vec<&'static str>,
}

/// The HTTP status of a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    /// 400: a request we must read is malformed (a back-channel logout token that does not verify).
    BadRequest,
    /// 401: no or bad credentials.
    Unauthorized,
    /// 403: good credentials, not enough rights, or no policy for the route.
    Forbidden,
    /// 503: the identity provider is needed and cannot be reached.
    Unavailable,
}

impl DenyStatus {
    /// The numeric HTTP status.
    pub fn code(self) -> u16 {
        match self {
            DenyStatus::BadRequest => 400,
            DenyStatus::Unauthorized => 401,
            DenyStatus::Forbidden => 403,
            DenyStatus::Unavailable => 503,
        }
    }
}

/// A denied request. `description` is always one of our own fixed texts, never client input or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// HTTP status of the answer.
    pub status: DenyStatus,
    /// OAuth error code for the body and `WWW-Authenticate` (`invalid_token`, `insufficient_scope`, ...).
    pub error: &'static str,
    /// Human-readable reason.
    pub description: String,
    /// `WWW-Authenticate` challenge (401 and 403 on bearer-like policies).
    pub www_authenticate: Option<String>,
    /// An HTML page for a browser instead of the JSON body (login errors).
    pub page: Option<String>,
    /// `Set-Cookie` header values (clearing a dead session).
    pub set_cookies: Vec<String>,
    /// Seconds for `retry-after` (a client locked out, a throttled grant); a 503 without one says 5. (u16 keeps
    /// `Deny` small; longer waits are said as 65535 and said again on the next try.)
    pub retry_after: Option<u16>,
    /// The full reason when `description` hides it (`display_errors = false`): for the log line and the
    /// metrics, never sent to the client.
    pub reason: Option<String>,
}

impl Deny {
    /// 401 with an RFC 6750 challenge.
    pub fn unauthorized(realm: &str, error: &'static str, description: impl Into<String>) -> Self {
        let description = description.into();
        Deny {
            status: DenyStatus::Unauthorized,
            error,
            www_authenticate: Some(challenge("Bearer", realm, error, &description)),
            description,
            page: None,
            set_cookies: Vec::new(),
            retry_after: None,
            reason: None,
        }
    }

    /// 403 `insufficient_scope` with an RFC 6750 challenge.
    pub fn insufficient(realm: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        Deny {
            status: DenyStatus::Forbidden,
            error: "insufficient_scope",
            www_authenticate: Some(challenge(
                "Bearer",
                realm,
                "insufficient_scope",
                &description,
            )),
            description,
            page: None,
            set_cookies: Vec::new(),
            retry_after: None,
            reason: None,
        }
    }

    /// 403 without a challenge (no policy for the route).
    pub fn forbidden(error: &'static str, description: impl Into<String>) -> Self {
        Deny {
            status: DenyStatus::Forbidden,
            error,
            description: description.into(),
            www_authenticate: None,
            page: None,
            set_cookies: Vec::new(),
            retry_after: None,
            reason: None,
        }
    }

    /// 400 `invalid_request` without a challenge.
    pub fn bad_request(description: impl Into<String>) -> Self {
        Deny {
            status: DenyStatus::BadRequest,
            error: "invalid_request",
            description: description.into(),
            www_authenticate: None,
            page: None,
            set_cookies: Vec::new(),
            retry_after: None,
            reason: None,
        }
    }

    /// 503: the identity provider is needed and did not answer usefully.
    pub fn unavailable(description: impl Into<String>) -> Self {
        Deny {
            status: DenyStatus::Unavailable,
            error: "temporarily_unavailable",
            description: description.into(),
            www_authenticate: None,
            page: None,
            set_cookies: Vec::new(),
            retry_after: None,
            reason: None,
        }
    }

    /// The content type and body of the answer: the HTML page when there is one, else the JSON
    /// `{"error", "error_description", "status"}`.
    pub fn body(&self) -> (&'static str, String) {
        match &self.page {
            Some(page) => ("text/html; charset=utf-8", page.clone()),
            None => (
                "application/json",
                serde_json::json!({
                    "error": self.error,
                    "error_description": self.description,
                    "status": self.status.code(),
                })
                .to_string(),
            ),
        }
    }

    /// The reason for the log line: the full one, even when the client reads only a generic message.
    pub fn log_reason(&self) -> &str {
        self.reason.as_deref().unwrap_or(&self.description)
    }

    /// The same deny telling the client only `message` (401 and 403 with `display_errors = false`): the
    /// description and the challenge's `error_description` become `message`, an HTML page says it instead, and
    /// the full reason is kept for the log line. The status, the `error` code, `login_uri`, cookies and
    /// `retry-after` stay.
    pub fn hiding_reason(mut self, message: &str) -> Self {
        if self.description == message {
            return self;
        }
        // Realms and error codes carry no `"` (the challenge removes them), so the parameter is found once.
        if let Some(w) = &self.www_authenticate {
            let ours = format!(
                "error_description=\"{}\"",
                challenge_text(&self.description)
            );
            let generic = format!("error_description=\"{}\"", challenge_text(message));
            self.www_authenticate = Some(w.replacen(&ours, &generic, 1));
        }
        if self.page.is_some() {
            self.page = Some(crate::login::error_page(message));
        }
        let reason = std::mem::replace(&mut self.description, message.to_string());
        self.reason = Some(reason);
        self
    }

    /// Seconds for the `retry-after` header: this deny's own (at least 1, never `retry-after: 0`), else 5 on a
    /// 503, else none.
    pub fn retry_after_secs(&self) -> Option<u16> {
        match (self.retry_after, self.status) {
            (Some(secs), _) => Some(secs.max(1)),
            (None, DenyStatus::Unavailable) => Some(5),
            (None, _) => None,
        }
    }
}

/// `Bearer realm="r", error="e", error_description="d"` with quotes and backslashes removed from the parts.
pub fn challenge(scheme: &str, realm: &str, error: &str, description: &str) -> String {
    let clean = challenge_text;
    format!(
        "{scheme} realm=\"{}\", error=\"{}\", error_description=\"{}\"",
        clean(realm),
        clean(error),
        clean(description)
    )
}

/// A text as a challenge's quoted string carries it: quotes, backslashes and control characters removed.
fn challenge_text(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hiding_the_reason_keeps_status_code_and_challenge_parameters() {
        let mut d = Deny::unauthorized("api", "invalid_token", "the token has expired");
        d.www_authenticate = d
            .www_authenticate
            .map(|w| format!("Basic realm=\"api\", {w}, login_uri=\"https://a/x\""));
        d.retry_after = Some(3);
        let h = d.hiding_reason("Unauthorized");
        assert_eq!(
            (h.status, h.error, h.description.as_str()),
            (DenyStatus::Unauthorized, "invalid_token", "Unauthorized")
        );
        assert_eq!(
            h.www_authenticate.as_deref(),
            Some(
                r#"Basic realm="api", Bearer realm="api", error="invalid_token", error_description="Unauthorized", login_uri="https://a/x""#
            )
        );
        assert_eq!(h.log_reason(), "the token has expired");
        assert_eq!(h.retry_after, Some(3));
        let (_, body) = h.body();
        assert!(
            !body.contains("expired") && body.contains("Unauthorized"),
            "{body}"
        );
        // a page says the message too
        let mut p = Deny::unauthorized("web", "access_denied", "the login state does not match");
        p.page = Some(crate::login::error_page(&p.description));
        let p = p.hiding_reason("Unauthorized");
        assert!(!p.page.unwrap().contains("state"));
        // nothing hidden: the description is the log's reason
        let f = Deny::forbidden("access_denied", "no policy");
        assert_eq!(f.log_reason(), "no policy");
    }

    #[test]
    fn challenge_strips_quotes() {
        assert_eq!(
            challenge("Bearer", "a\"b", "e", "d\\\n"),
            r#"Bearer realm="ab", error="e", error_description="d""#
        );
    }
}
