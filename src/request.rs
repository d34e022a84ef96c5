//! A borrowed view of a `CheckRequest`: method, host, path, query and headers, read the same way whether Envoy
//! sent the `headers` map or the raw `header_map` (`encode_raw_headers: true`).

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

/// Where the headers came from.
#[derive(Debug)]
enum Headers<'a> {
    /// `attributes.request.http.headers`: lower-case keys, merged values.
    Map(&'a HashMap<String, String>),
    /// `attributes.request.http.header_map`: raw pairs; a value that is not UTF-8 is kept as `None`.
    Raw(Vec<(&'a str, Option<&'a str>)>),
}

/// What the authorizer needs of one Check, borrowed from the protobuf.
#[derive(Debug)]
pub struct CheckView<'a> {
    /// HTTP method (`GET`), empty when Envoy sent none.
    pub method: &'a str,
    /// `Host`/`:authority`, possibly with a port.
    pub host: &'a str,
    /// The path without query or fragment.
    pub path: &'a str,
    /// The query string without `?` (empty if none).
    pub query: &'a str,
    /// `http` or `https` as Envoy saw it.
    pub scheme: &'a str,
    /// Envoy's request id, for logs.
    pub request_id: &'a str,
    /// `context_extensions` from the route (`policy` selects a policy).
    pub context_extensions: Option<&'a HashMap<String, String>>,
    /// The request body, when the route sends it (`with_request_body`; `raw_body` with `pack_as_bytes`); empty
    /// otherwise.
    pub body: &'a [u8],
    /// The request's size in bytes as Envoy knew it (`-1`: unknown); more than `body` holds means a cut body.
    pub size: i64,
    headers: Headers<'a>,
}

static EMPTY: std::sync::LazyLock<HashMap<String, String>> = std::sync::LazyLock::new(HashMap::new);

impl<'a> CheckView<'a> {
    /// Builds the view; missing attributes give empty fields, never a panic.
    pub fn new(req: &'a CheckRequest) -> Self {
        let attrs = req.attributes.as_ref();
        let context_extensions = attrs
            .map(|a| &a.context_extensions)
            .filter(|c| !c.is_empty());
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else {
            return CheckView {
                method: "",
                host: "",
                path: "",
                query: "",
                scheme: "",
                request_id: "",
                context_extensions,
                body: &[],
                size: -1,
                headers: Headers::Map(&EMPTY),
            };
        };
        let headers = match &http.header_map {
            Some(hm) if !hm.headers.is_empty() => Headers::Raw(
                hm.headers
                    .iter()
                    .map(|h| {
                        let v = if h.raw_value.is_empty() {
                            Some(h.value.as_str())
                        } else {
                            std::str::from_utf8(&h.raw_value).ok()
                        };
                        (h.key.as_str(), v)
                    })
                    .collect(),
            ),
            _ => Headers::Map(&http.headers),
        };
        let (path, query) = split_target(&http.path);
        let mut view = CheckView {
            method: http.method.as_str(),
            host: http.host.as_str(),
            path,
            query: if http.query.is_empty() {
                query
            } else {
                http.query.as_str()
            },
            scheme: http.scheme.as_str(),
            request_id: http.id.as_str(),
            context_extensions,
            body: if http.raw_body.is_empty() {
                http.body.as_bytes()
            } else {
                &http.raw_body
            },
            size: http.size,
            headers,
        };
        if view.host.is_empty() {
            view.host = view
                .header(":authority")
                .or_else(|| view.header("host"))
                .unwrap_or("");
        }
        if view.method.is_empty() {
            view.method = view.header(":method").unwrap_or("");
        }
        if view.path.is_empty()
            && let Some(p) = view.header(":path")
        {
            let (path, query) = split_target(p);
            view.path = path;
            if view.query.is_empty() {
                view.query = query;
            }
        }
        view
    }

    /// The first value of a header (case-insensitive name). A raw value that is not UTF-8 reads as absent.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        match &self.headers {
            Headers::Map(m) => m
                .get(name)
                .or_else(|| {
                    m.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v)
                })
                .map(String::as_str),
            Headers::Raw(v) => v
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| *v),
        }
    }

    /// Every value of a header (case-insensitive name), without allocating. A raw non-UTF-8 value appears as
    /// `None`. (A scan: with a dozen headers, comparing lengths first is cheaper than hashing the name.)
    #[inline]
    pub fn header_values<'s>(
        &'s self,
        name: &'s str,
    ) -> impl Iterator<Item = Option<&'a str>> + 's {
        let (map, raw) = match &self.headers {
            Headers::Map(m) => (
                Some(
                    m.iter()
                        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| Some(v.as_str())),
                ),
                None,
            ),
            Headers::Raw(v) => (
                None,
                Some(
                    v.iter()
                        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| *v),
                ),
            ),
        };
        map.into_iter().flatten().chain(raw.into_iter().flatten())
    }

    /// The names of every header the client sent (as Envoy passed them: lower case), in no particular order.
    pub fn header_names(&self) -> impl Iterator<Item = &'a str> + '_ {
        let (map, raw) = match &self.headers {
            Headers::Map(m) => (Some(m.keys().map(String::as_str)), None),
            Headers::Raw(v) => (None, Some(v.iter().map(|(k, _)| *k))),
        };
        map.into_iter().flatten().chain(raw.into_iter().flatten())
    }

    /// Whether the client sent this header at all.
    pub fn has_header(&self, name: &str) -> bool {
        self.header_values(name).next().is_some()
    }

    /// The policy Envoy named for this route, if any.
    pub fn policy_hint(&self) -> Option<&'a str> {
        self.context_extensions
            .and_then(|c| c.get("policy"))
            .map(String::as_str)
    }
}

/// Splits a request target into path and query, dropping any fragment.
fn split_target(target: &str) -> (&str, &str) {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    }
}

/// A Check of `http` (for unit tests).
#[cfg(test)]
pub(crate) fn check_request(
    http: envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request;
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// An HTTP request of a Check: `method`, `path`, `headers` (for unit tests).
#[cfg(test)]
pub(crate) fn http_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest {
    envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest {
        method: method.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// A `GET /x` Check with these headers (for unit tests).
#[cfg(test)]
pub(crate) fn get_with_headers(headers: &[(&str, &str)]) -> CheckRequest {
    check_request(http_request("GET", "/x", headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;

    fn req(http: HttpRequest) -> CheckRequest {
        check_request(http)
    }

    #[test]
    fn empty_request_is_empty_view() {
        let r = CheckRequest::default();
        let v = CheckView::new(&r);
        assert_eq!((v.method, v.host, v.path), ("", "", ""));
        assert!(v.header("authorization").is_none());
    }

    #[test]
    fn map_headers_and_path_split() {
        let mut h = HashMap::new();
        h.insert("authorization".to_string(), "Bearer x".to_string());
        let r = req(HttpRequest {
            method: "GET".into(),
            host: "a.com".into(),
            path: "/p/q?x=1#frag".into(),
            headers: h,
            ..Default::default()
        });
        let v = CheckView::new(&r);
        assert_eq!(v.path, "/p/q");
        assert_eq!(v.query, "x=1");
        assert_eq!(v.header("Authorization"), Some("Bearer x"));
    }

    #[test]
    fn raw_headers_non_utf8_and_repeats() {
        let hv = |k: &str, v: &[u8]| HeaderValue {
            key: k.into(),
            value: String::new(),
            raw_value: v.to_vec(),
        };
        let r = req(HttpRequest {
            path: "/".into(),
            header_map: Some(HeaderMap {
                headers: vec![
                    hv(":authority", b"h.com"),
                    hv(":method", b"POST"),
                    hv("x-a", b"1"),
                    hv("X-A", b"2"),
                    hv("x-bad", &[0xff, 0xfe]),
                ],
            }),
            ..Default::default()
        });
        let v = CheckView::new(&r);
        assert_eq!(v.host, "h.com");
        assert_eq!(v.method, "POST");
        assert_eq!(
            v.header_values("x-a").collect::<Vec<_>>(),
            vec![Some("1"), Some("2")]
        );
        assert_eq!(v.header("x-bad"), None);
        assert!(v.has_header("x-bad"));
    }

    /// A `headers` map is read in any case: every spelling of a name is found, each one a value.
    #[test]
    fn map_headers_in_any_case() {
        let map = |pairs: &[(&str, &str)]| {
            req(HttpRequest {
                path: "/".into(),
                headers: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })
        };
        let lower = map(&[("authorization", "Bearer a"), ("x-id", "1")]);
        let v = CheckView::new(&lower);
        assert_eq!(v.header("authorization"), Some("Bearer a"));
        assert_eq!(v.header("Authorization"), Some("Bearer a"));
        assert_eq!(v.header("x-other"), None);
        assert_eq!(v.header_values("X-Id").collect::<Vec<_>>(), vec![Some("1")]);
        assert!(v.has_header("x-id") && !v.has_header("x-other"));
        let mixed = map(&[("Authorization", "Bearer a"), ("authorization", "Bearer b")]);
        let v = CheckView::new(&mixed);
        let mut values: Vec<_> = v.header_values("authorization").collect();
        values.sort();
        assert_eq!(values, vec![Some("Bearer a"), Some("Bearer b")]);
        let upper = map(&[("X-Client-Id", "c")]);
        let v = CheckView::new(&upper);
        assert_eq!(v.header("x-client-id"), Some("c"));
        assert!(v.has_header("x-client-id"));
    }
}
