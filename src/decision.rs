//! The answer to one Check, and the one place that turns it into an Envoy `CheckResponse`.

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
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
    /// Verified facts for `dynamic_metadata` (sub, iss, client_id, policy, auth_method).
    pub metadata: Vec<(&'static str, String)>,
    /// Headers added to the response the client gets (`Set-Cookie` of a refreshed session).
    pub response_headers: Vec<(&'static str, String)>,
}

/// The HTTP status of a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
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
            DenyStatus::Unauthorized => 401,
            DenyStatus::Forbidden => 403,
            DenyStatus::Unavailable => 503,
        }
    }

    fn rpc_code(self) -> i32 {
        match self {
            DenyStatus::Unauthorized => tonic::Code::Unauthenticated as i32,
            DenyStatus::Forbidden => tonic::Code::PermissionDenied as i32,
            DenyStatus::Unavailable => tonic::Code::Unavailable as i32,
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
        }
    }
}

/// `Bearer realm="r", error="e", error_description="d"` with quotes and backslashes removed from the parts.
pub fn challenge(scheme: &str, realm: &str, error: &str, description: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect::<String>()
    };
    format!(
        "{scheme} realm=\"{}\", error=\"{}\", error_description=\"{}\"",
        clean(realm),
        clean(error),
        clean(description)
    )
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: Vec::new(),
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// The headers every answer of ours carries: its own first header, no caching, and any cookies.
fn answer_headers(first: (&str, &str), set_cookies: &[String]) -> Vec<HeaderValueOption> {
    let mut headers = vec![
        header(first.0, first.1, HeaderAppendAction::OverwriteIfExistsOrAdd),
        header(
            "cache-control",
            "no-store",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ),
        header(
            "pragma",
            "no-cache",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ),
    ];
    for c in set_cookies {
        headers.push(header(
            "set-cookie",
            c,
            HeaderAppendAction::AppendIfExistsOrAdd,
        ));
    }
    headers
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

impl Decision {
    /// The `CheckResponse` for Envoy. Every deny carries `cache-control: no-store` and a JSON body.
    pub fn into_response(self) -> CheckResponse {
        match self {
            Decision::Allow(allow) => {
                let headers = allow
                    .set_headers
                    .iter()
                    .map(|(k, v)| header(k.as_str(), v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                    .collect();
                let metadata = (!allow.metadata.is_empty()).then(|| Struct {
                    fields: allow
                        .metadata
                        .iter()
                        .map(|(k, v)| (k.to_string(), string_value(v)))
                        .collect(),
                });
                CheckResponse {
                    status: Some(rpc::Status {
                        code: tonic::Code::Ok as i32,
                        ..Default::default()
                    }),
                    dynamic_metadata: metadata,
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers,
                        headers_to_remove: allow
                            .remove_headers
                            .iter()
                            .map(|h| h.as_str().to_string())
                            .collect(),
                        response_headers_to_add: allow
                            .response_headers
                            .iter()
                            .map(|(k, v)| header(k, v, HeaderAppendAction::AppendIfExistsOrAdd))
                            .collect(),
                        ..Default::default()
                    })),
                }
            }
            Decision::Redirect(r) => {
                let headers = answer_headers(("location", &r.location), &r.set_cookies);
                CheckResponse {
                    // Not OK: Envoy answers the client itself with the 302.
                    status: Some(rpc::Status {
                        code: tonic::Code::Unauthenticated as i32,
                        message: "redirect".into(),
                        ..Default::default()
                    }),
                    dynamic_metadata: None,
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus { code: 302 }),
                        headers,
                        body: String::new(),
                    })),
                }
            }
            Decision::Deny(deny) => {
                let (content_type, body) = match &deny.page {
                    Some(page) => ("text/html; charset=utf-8", page.clone()),
                    None => (
                        "application/json",
                        serde_json::json!({
                            "error": deny.error,
                            "error_description": deny.description,
                            "status": deny.status.code(),
                        })
                        .to_string(),
                    ),
                };
                let mut headers = answer_headers(("content-type", content_type), &deny.set_cookies);
                if let Some(c) = &deny.www_authenticate {
                    headers.push(header(
                        "www-authenticate",
                        c,
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    ));
                }
                let retry_after = match (deny.retry_after, deny.status) {
                    (Some(secs), _) => Some(secs.max(1).to_string()),
                    (None, DenyStatus::Unavailable) => Some("5".to_string()),
                    (None, _) => None,
                };
                if let Some(secs) = retry_after {
                    headers.push(header(
                        "retry-after",
                        &secs,
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    ));
                }
                CheckResponse {
                    status: Some(rpc::Status {
                        code: deny.status.rpc_code(),
                        message: deny.error.to_string(),
                        ..Default::default()
                    }),
                    dynamic_metadata: None,
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: deny.status.code() as i32,
                        }),
                        headers,
                        body,
                    })),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_response_shape() {
        let r = Decision::Deny(Deny::unauthorized(
            "api",
            "invalid_token",
            "the token has expired",
        ))
        .into_response();
        assert_eq!(r.status.unwrap().code, tonic::Code::Unauthenticated as i32);
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
            panic!("not denied")
        };
        assert_eq!(d.status.unwrap().code, 401);
        let get = |k: &str| {
            d.headers
                .iter()
                .find(|h| h.header.as_ref().unwrap().key == k)
                .map(|h| h.header.clone().unwrap().value)
        };
        assert_eq!(get("cache-control").as_deref(), Some("no-store"));
        assert_eq!(
            get("www-authenticate").as_deref(),
            Some(
                r#"Bearer realm="api", error="invalid_token", error_description="the token has expired""#
            )
        );
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["status"], 401);
    }

    #[test]
    fn retry_after_on_a_401_and_a_503() {
        let retry = |d: Deny| {
            let Some(HttpResponse::DeniedResponse(r)) =
                Decision::Deny(d).into_response().http_response
            else {
                panic!("not denied")
            };
            r.headers
                .iter()
                .find(|h| h.header.as_ref().unwrap().key == "retry-after")
                .map(|h| h.header.clone().unwrap().value)
        };
        let mut locked = Deny::unauthorized("cc", "invalid_client", "locked out");
        assert_eq!(retry(locked.clone()), None);
        locked.retry_after = Some(42);
        assert_eq!(retry(locked).as_deref(), Some("42"));
        let mut busy = Deny::unavailable("busy");
        assert_eq!(retry(busy.clone()).as_deref(), Some("5"));
        busy.retry_after = Some(0);
        assert_eq!(retry(busy).as_deref(), Some("1"), "never retry-after: 0");
    }

    #[test]
    fn challenge_strips_quotes() {
        assert_eq!(
            challenge("Bearer", "a\"b", "e", "d\\\n"),
            r#"Bearer realm="ab", error="e", error_description="d""#
        );
    }

    #[test]
    fn allow_response_shape() {
        let r = Decision::Allow(Allow {
            set_headers: vec![(HeaderName::from_static("x-user"), "alice".into())],
            remove_headers: vec![HeaderName::from_static("x-groups")],
            metadata: vec![("sub", "alice".into())],
            response_headers: vec![("set-cookie", "s=1".into())],
        })
        .into_response();
        assert_eq!(r.status.unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("not ok")
        };
        assert_eq!(
            ok.headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(ok.headers_to_remove, vec!["x-groups".to_string()]);
        assert!(r.dynamic_metadata.unwrap().fields.contains_key("sub"));
        assert_eq!(
            ok.response_headers_to_add[0].header.as_ref().unwrap().key,
            "set-cookie"
        );
    }

    #[test]
    fn redirect_response_shape() {
        let r = Decision::Redirect(Redirect {
            location: "https://idp.example.com/authorize?x=1".into(),
            set_cookies: vec!["a=1; Path=/".into(), "b=2; Path=/".into()],
        })
        .into_response();
        assert_ne!(
            r.status.unwrap().code,
            0,
            "Envoy must answer the 302 itself"
        );
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
            panic!("not a denied response")
        };
        assert_eq!(d.status.unwrap().code, 302);
        let cookies: Vec<_> = d
            .headers
            .iter()
            .filter(|h| h.header.as_ref().unwrap().key == "set-cookie")
            .map(|h| (h.header.clone().unwrap().value, h.append_action))
            .collect();
        assert_eq!(cookies.len(), 2);
        assert!(
            cookies
                .iter()
                .all(|(_, a)| *a == HeaderAppendAction::AppendIfExistsOrAdd as i32)
        );
    }
}
