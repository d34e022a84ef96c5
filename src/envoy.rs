//! The Envoy adapter: the one place that turns a [`Decision`] into an ext_authz `CheckResponse` (protobuf).

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;

use crate::decision::{Allow, Answered, Decision, Deny, DenyStatus, Redirect};

/// The `CheckResponse` for Envoy. Every deny carries `cache-control: no-store` and a JSON body.
pub fn check_response(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow(allow) => allowed(allow),
        Decision::Redirect(redirect) => redirected(redirect),
        Decision::Deny(deny) => denied(deny),
        Decision::Answered(a) => answered(a),
    }
}

/// A success Envoy answers itself (not OK, so Envoy does not forward the request; the HTTP status is ours).
fn answered(a: Answered) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Unauthenticated as i32,
            message: "answered".into(),
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(a.status),
            }),
            headers: answer_headers(("content-length", "0"), &[]),
            body: String::new(),
        })),
    }
}

/// OK: Envoy forwards the request with our headers and metadata.
fn allowed(allow: Allow) -> CheckResponse {
    // The values are moved into the response, not copied.
    let headers = allow
        .set_headers
        .into_iter()
        .map(|(k, v)| {
            owned_header(
                k.as_str().to_string(),
                v,
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .collect();
    let metadata = (!allow.metadata.is_empty()).then(|| Struct {
        fields: allow
            .metadata
            .into_iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v)),
                };
                (k.to_string(), value)
            })
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
                .into_iter()
                .map(|(k, v)| {
                    owned_header(k.to_string(), v, HeaderAppendAction::AppendIfExistsOrAdd)
                })
                .collect(),
            query_parameters_to_remove: allow
                .remove_query_params
                .iter()
                .map(|p| p.to_string())
                .collect(),
            ..Default::default()
        })),
    }
}

/// A 302 that Envoy answers itself.
fn redirected(r: Redirect) -> CheckResponse {
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

/// An error answer: status, body, challenge, `retry-after` and cookies.
fn denied(deny: Deny) -> CheckResponse {
    let (content_type, body) = deny.body();
    let mut headers = answer_headers(("content-type", content_type), &deny.set_cookies);
    if let Some(c) = &deny.www_authenticate {
        headers.push(header(
            "www-authenticate",
            c,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    if let Some(secs) = deny.retry_after_secs() {
        headers.push(header(
            "retry-after",
            &secs.to_string(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: rpc_code(deny.status),
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

/// The gRPC status of a deny.
fn rpc_code(status: DenyStatus) -> i32 {
    match status {
        DenyStatus::BadRequest => tonic::Code::InvalidArgument as i32,
        DenyStatus::Unauthorized => tonic::Code::Unauthenticated as i32,
        DenyStatus::Forbidden => tonic::Code::PermissionDenied as i32,
        DenyStatus::Unavailable => tonic::Code::Unavailable as i32,
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    owned_header(key.to_string(), value.to_string(), action)
}

fn owned_header(key: String, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    #[test]
    fn deny_response_shape() {
        let r = check_response(Decision::Deny(Deny::unauthorized(
            "api",
            "invalid_token",
            "the token has expired",
        )));
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
                check_response(Decision::Deny(d)).http_response
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
    fn allow_response_shape() {
        let r = check_response(Decision::Allow(Allow {
            set_headers: vec![(HeaderName::from_static("x-user"), "alice".into())],
            remove_headers: vec![HeaderName::from_static("x-groups")],
            metadata: vec![("sub", "alice".into())],
            response_headers: vec![("set-cookie", "s=1".into())],
            remove_query_params: vec!["access_token"],
        }));
        assert_eq!(r.status.unwrap().code, 0);
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("not ok")
        };
        assert_eq!(
            ok.headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(ok.headers_to_remove, vec!["x-groups".to_string()]);
        assert_eq!(
            ok.query_parameters_to_remove,
            vec!["access_token".to_string()]
        );
        assert!(r.dynamic_metadata.unwrap().fields.contains_key("sub"));
        assert_eq!(
            ok.response_headers_to_add[0].header.as_ref().unwrap().key,
            "set-cookie"
        );
    }

    #[test]
    fn redirect_response_shape() {
        let r = check_response(Decision::Redirect(Redirect {
            location: "https://idp.example.com/authorize?x=1".into(),
            set_cookies: vec!["a=1; Path=/".into(), "b=2; Path=/".into()],
        }));
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
