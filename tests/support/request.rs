//! Check requests built the way Envoy sends them.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};

/// Builds a CheckRequest the way Envoy sends one.
#[derive(Clone, Default)]
pub struct Req {
    method: String,
    host: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    raw: bool,
    ext: HashMap<String, String>,
    body: String,
}

pub fn req(path: &str) -> Req {
    Req {
        method: "GET".into(),
        host: "app.example.com".into(),
        path: path.into(),
        ..Default::default()
    }
}

impl Req {
    pub fn policy(mut self, p: &str) -> Self {
        self.ext.insert("policy".into(), p.into());
        self
    }
    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }
    pub fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.as_bytes().to_vec()));
        self
    }
    pub fn header_bytes(mut self, k: &str, v: &[u8]) -> Self {
        self.headers.push((k.into(), v.to_vec()));
        self
    }
    pub fn basic(self, id: &str, secret: &str) -> Self {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        self.header("authorization", &format!("Basic {b}"))
    }
    pub fn bearer(self, t: &str) -> Self {
        self.header("authorization", &format!("Bearer {t}"))
    }
    /// The request body as Envoy sends it with `with_request_body` (the `body` field).
    pub fn body(mut self, b: &str) -> Self {
        self.body = b.into();
        self
    }
    /// Sends headers in `header_map` (Envoy's `encode_raw_headers: true`) instead of the `headers` map.
    pub fn raw(mut self) -> Self {
        self.raw = true;
        self
    }
    pub fn build(self) -> CheckRequest {
        let mut http = HttpRequest {
            id: "req-1".into(),
            method: self.method,
            host: self.host,
            path: self.path,
            scheme: "https".into(),
            protocol: "HTTP/1.1".into(),
            body: self.body,
            ..Default::default()
        };
        if self.raw {
            http.header_map = Some(HeaderMap {
                headers: self
                    .headers
                    .into_iter()
                    .map(|(k, v)| HeaderValue {
                        key: k,
                        value: String::new(),
                        raw_value: v,
                    })
                    .collect(),
            });
        } else {
            for (k, v) in self.headers {
                let v = String::from_utf8_lossy(&v).into_owned();
                http.headers
                    .entry(k.to_ascii_lowercase())
                    .and_modify(|e| {
                        e.push(',');
                        e.push_str(&v)
                    })
                    .or_insert(v);
            }
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(http),
                    ..Default::default()
                }),
                context_extensions: self.ext,
                ..Default::default()
            }),
        }
    }
}
