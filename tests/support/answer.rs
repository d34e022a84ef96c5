//! Check answers read back as plain values.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use serde_json::Value;

/// A CheckResponse read back as plain values, the way Envoy reads it: an allow is gRPC OK with an `OkResponse`, a
/// deny (or redirect) is a non-OK gRPC code with a `DeniedResponse` naming its HTTP status. [`Answer::from`] panics
/// on anything else, so no test can mistake an inconsistent answer for the one it expects.
#[derive(Debug)]
pub struct Answer {
    /// The gRPC status code (0: OK).
    pub grpc_code: i32,
    /// HTTP status of a deny; 200 for an allow (and only for an allow).
    pub status: u16,
    pub headers: Vec<(String, String, i32)>,
    pub remove: Vec<String>,
    /// Query parameters removed from the path sent upstream (allow only).
    pub remove_query: Vec<String>,
    pub body: String,
    pub metadata: HashMap<String, String>,
    /// Headers added to the client's response (allow only).
    pub response_headers: Vec<(String, String, i32)>,
}

impl Answer {
    /// Reads `r` back; panics unless it is a consistent allow (gRPC OK + `OkResponse`) or a consistent deny
    /// (non-OK gRPC code + `DeniedResponse` with a non-2xx HTTP status).
    pub fn from(r: CheckResponse) -> Answer {
        // Envoy reads a missing status as the proto3 default, code 0: OK.
        let grpc_code = r.status.as_ref().map_or(0, |s| s.code);
        let metadata = r
            .dynamic_metadata
            .map(|m| {
                m.fields
                    .into_iter()
                    .filter_map(|(k, v)| match v.kind {
                        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => {
                            Some((k, s))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let hv = |h: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| -> Vec<(String, String, i32)> {
            h.iter()
                .map(|o| {
                    let v = o.header.clone().unwrap();
                    (v.key, v.value, o.append_action)
                })
                .collect()
        };
        let ok = grpc_code == tonic::Code::Ok as i32;
        match r.http_response {
            Some(HttpResponse::OkResponse(allow)) if ok => Answer {
                grpc_code,
                status: 200,
                headers: hv(&allow.headers),
                remove: allow.headers_to_remove,
                remove_query: allow.query_parameters_to_remove,
                body: String::new(),
                metadata,
                response_headers: hv(&allow.response_headers_to_add),
            },
            Some(HttpResponse::DeniedResponse(d)) if !ok => {
                let status = d
                    .status
                    .as_ref()
                    .and_then(|s| u16::try_from(s.code).ok())
                    .filter(|s| *s >= 300)
                    .unwrap_or_else(|| {
                        panic!("a deny must name a non-2xx HTTP status: {:?}", d.status)
                    });
                Answer {
                    grpc_code,
                    status,
                    headers: hv(&d.headers),
                    remove: Vec::new(),
                    remove_query: Vec::new(),
                    body: d.body,
                    metadata,
                    response_headers: Vec::new(),
                }
            }
            Some(HttpResponse::OkResponse(allow)) => panic!(
                "an OkResponse with gRPC code {grpc_code}: Envoy would deny it (allow = gRPC OK + OkResponse): {allow:?}"
            ),
            Some(HttpResponse::DeniedResponse(d)) => panic!(
                "a DeniedResponse with gRPC OK: Envoy would let the request through (deny = non-OK code): {d:?}"
            ),
            Some(HttpResponse::ErrorResponse(e)) => {
                panic!("an ErrorResponse: neither an allow nor a deny: {e:?}")
            }
            None => panic!(
                "an answer with gRPC code {grpc_code} and no http_response: neither an allow nor a deny"
            ),
        }
    }

    /// Every `Set-Cookie` of the answer (redirects and denies carry them in `headers`, allows in
    /// `response_headers`), as `name=value` pairs of cookies being set (deletions are skipped).
    pub fn cookies_set(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .chain(self.response_headers.iter())
            .filter(|(k, _, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter(|(_, v, _)| !v.contains("Max-Age=0"))
            .filter_map(|(_, v, _)| {
                v.split(';')
                    .next()?
                    .split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect()
    }

    /// Names of cookies this answer deletes.
    pub fn cookies_cleared(&self) -> Vec<String> {
        self.headers
            .iter()
            .chain(self.response_headers.iter())
            .filter(|(k, v, _)| k.eq_ignore_ascii_case("set-cookie") && v.contains("Max-Age=0"))
            .filter_map(|(_, v, _)| v.split('=').next().map(str::to_string))
            .collect()
    }

    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v, _)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts an allow (which [`Answer::from`] only reads from gRPC OK with an `OkResponse`).
    pub fn assert_allow(&self) {
        assert_eq!(self.status, 200, "{self:?}");
    }

    /// Asserts a deny with this status, error code, JSON body and no-store, and that nothing in it echoes `secret`.
    pub fn assert_deny(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_ne!(self.grpc_code, 0, "a deny must not carry gRPC OK: {self:?}");
        assert_eq!(self.header("cache-control"), Some("no-store"), "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["error"], error, "{self:?}");
        assert_eq!(body["status"], status, "{self:?}");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{self:?}"
        );
    }

    pub fn assert_not_echoing(&self, secret: &str) {
        let all = format!("{:?}", self);
        assert!(!all.contains(secret), "answer echoes a secret: {all}");
    }
}

/// [`Answer::from`] reads an answer as Envoy would, and refuses every answer Envoy would read otherwise than a test.
mod consistency {
    use envoy_types::ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HttpResponse, HttpStatus, OkHttpResponse,
    };
    use envoy_types::pb::google::rpc;

    use super::Answer;

    fn response(code: Option<i32>, http: Option<HttpResponse>) -> CheckResponse {
        CheckResponse {
            status: code.map(|code| rpc::Status {
                code,
                ..Default::default()
            }),
            http_response: http,
            ..Default::default()
        }
    }

    fn ok() -> Option<HttpResponse> {
        Some(HttpResponse::OkResponse(OkHttpResponse::default()))
    }

    fn denied(status: Option<i32>) -> Option<HttpResponse> {
        Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: status.map(|code| HttpStatus { code }),
            ..Default::default()
        }))
    }

    #[test]
    fn an_allow_is_grpc_ok_and_an_ok_response() {
        assert_eq!(Answer::from(response(Some(0), ok())).status, 200);
        // Envoy reads a missing status as OK
        assert_eq!(Answer::from(response(None, ok())).status, 200);
    }

    #[test]
    fn a_deny_is_a_non_ok_code_and_a_denied_response() {
        let a = Answer::from(response(Some(16), denied(Some(302))));
        assert_eq!((a.grpc_code, a.status), (16, 302));
    }

    #[test]
    #[should_panic(expected = "an OkResponse with gRPC code 7")]
    fn an_ok_response_with_a_non_ok_code_is_refused() {
        Answer::from(response(Some(7), ok()));
    }

    #[test]
    #[should_panic(expected = "a DeniedResponse with gRPC OK")]
    fn a_denied_response_with_grpc_ok_is_refused() {
        Answer::from(response(Some(0), denied(Some(401))));
    }

    #[test]
    #[should_panic(expected = "a DeniedResponse with gRPC OK")]
    fn a_denied_response_without_a_status_is_refused() {
        Answer::from(response(None, denied(Some(403))));
    }

    #[test]
    #[should_panic(expected = "a deny must name a non-2xx HTTP status")]
    fn a_deny_with_a_2xx_status_is_refused() {
        Answer::from(response(Some(7), denied(Some(200))));
    }

    #[test]
    #[should_panic(expected = "a deny must name a non-2xx HTTP status")]
    fn a_deny_without_an_http_status_is_refused() {
        Answer::from(response(Some(7), denied(None)));
    }

    #[test]
    #[should_panic(expected = "no http_response")]
    fn an_answer_without_an_http_response_is_refused() {
        Answer::from(response(Some(0), None));
    }
}
