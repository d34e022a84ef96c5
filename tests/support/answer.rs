//! Check answers read back as plain values.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use serde_json::Value;

/// A CheckResponse read back as plain values.
#[derive(Debug)]
pub struct Answer {
    pub grpc_code: i32,
    /// HTTP status of a deny; 200 for an allow.
    pub status: u16,
    pub headers: Vec<(String, String, i32)>,
    pub remove: Vec<String>,
    pub body: String,
    pub metadata: HashMap<String, String>,
    /// Headers added to the client's response (allow only).
    pub response_headers: Vec<(String, String, i32)>,
}

impl Answer {
    pub fn from(r: CheckResponse) -> Answer {
        let grpc_code = r.status.as_ref().map(|s| s.code).unwrap_or(-1);
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
        match r.http_response {
            Some(HttpResponse::OkResponse(ok)) => Answer {
                grpc_code,
                status: 200,
                headers: hv(&ok.headers),
                remove: ok.headers_to_remove,
                body: String::new(),
                metadata,
                response_headers: hv(&ok.response_headers_to_add),
            },
            Some(HttpResponse::DeniedResponse(d)) => Answer {
                grpc_code,
                status: d.status.map(|s| s.code as u16).unwrap_or(0),
                headers: hv(&d.headers),
                remove: Vec::new(),
                body: d.body,
                metadata,
                response_headers: Vec::new(),
            },
            _ => Answer {
                grpc_code,
                status: 0,
                headers: vec![],
                remove: vec![],
                body: String::new(),
                metadata,
                response_headers: Vec::new(),
            },
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
