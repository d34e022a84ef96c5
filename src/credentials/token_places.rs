//! Where a policy reads a bearer token (Kong's `bearer_token_param_type`): the `Authorization` header, the RFC 6750
//! `access_token` query parameter or form-body field, or a named cookie; and the one-place rule of RFC 6750.

use std::borrow::Cow;

use super::{Authorization, authorization};
use crate::login::cookie::RequestCookies;
use crate::request::CheckView;

/// The RFC 6750 parameter name, in the query and in a form body.
pub const ACCESS_TOKEN_PARAM: &str = "access_token";

/// Where a policy reads a bearer token (validated `bearer_token_param_type` and `bearer_token_cookie_name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPlaces {
    /// `header`: `Authorization: Bearer` (the default, and the only place unless configured).
    pub header: bool,
    /// `query`: the `access_token` query parameter (removed from the path sent upstream on an allow).
    pub query: bool,
    /// `body`: the `access_token` field of an `application/x-www-form-urlencoded` body of a non-GET request
    /// (Envoy must send the body: `with_request_body`).
    pub body: bool,
    /// `cookie`: the cookie of this name (`bearer_token_cookie_name`).
    pub cookie: Option<String>,
}

impl Default for TokenPlaces {
    /// `["header"]`.
    fn default() -> Self {
        TokenPlaces {
            header: true,
            query: false,
            body: false,
            cookie: None,
        }
    }
}

impl TokenPlaces {
    /// Whether a place other than the header is configured.
    pub fn beyond_header(&self) -> bool {
        self.query || self.body || self.cookie.is_some()
    }
}

/// Where the request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlace {
    /// The `Authorization` header.
    Header,
    /// The `access_token` query parameter.
    Query,
    /// The `access_token` form-body field.
    Body,
    /// The policy's token cookie.
    Cookie,
}

impl TokenPlace {
    /// The `bearer_token_param_type` name.
    pub fn name(self) -> &'static str {
        match self {
            TokenPlace::Header => "header",
            TokenPlace::Query => "query",
            TokenPlace::Body => "body",
            TokenPlace::Cookie => "cookie",
        }
    }
}

/// What one place holds: a token, or a reason the request is refused (repeated, empty, unreadable).
type Found<'a> = Result<Cow<'a, str>, &'static str>;

/// The request's credentials as [`Authorization`], read from every place `places` names (the header always, so a
/// second credential in it is seen), and where they came from. More than one place, a repeat within one, or an
/// unreadable place is [`Authorization::Malformed`] (RFC 6750: a client MUST NOT use more than one method).
pub fn read<'a>(
    view: &CheckView<'a>,
    places: &TokenPlaces,
    cookies: &RequestCookies<'a>,
) -> (Authorization<'a>, Option<TokenPlace>) {
    let header = authorization(view);
    if !places.beyond_header() {
        return match header {
            Authorization::None => (header, None),
            Authorization::Bearer(_) if !places.header => (
                Authorization::Malformed(
                    "this route does not take a token in the Authorization header",
                ),
                Some(TokenPlace::Header),
            ),
            other => (other, Some(TokenPlace::Header)),
        };
    }
    let mut found: Vec<(TokenPlace, Found<'a>)> = Vec::with_capacity(2);
    if places.query
        && let Some(f) = query_token(view.query)
    {
        found.push((TokenPlace::Query, f));
    }
    if places.body
        && let Some(f) = body_token(view)
    {
        found.push((TokenPlace::Body, f));
    }
    if let Some(name) = &places.cookie
        && let Some(f) = cookie_token(cookies, name)
    {
        found.push((TokenPlace::Cookie, f));
    }
    if let Some((place, Err(why))) = found.iter().find(|(_, f)| f.is_err()) {
        return (Authorization::Malformed(why), Some(*place));
    }
    let header_place = (header != Authorization::None).then_some(TokenPlace::Header);
    match (header, found.len()) {
        (Authorization::None, 0) => (Authorization::None, None),
        (Authorization::Bearer(_), 0) if !places.header => (
            Authorization::Malformed(
                "this route does not take a token in the Authorization header",
            ),
            header_place,
        ),
        (header, 0) => (header, header_place),
        (Authorization::None, 1) => match found.pop() {
            Some((place, Ok(token))) => (Authorization::Bearer(token), Some(place)),
            // Errors were answered above; a single entry is always there.
            _ => (Authorization::Malformed("no readable token"), None),
        },
        _ => (
            Authorization::Malformed("the request carries credentials in more than one place"),
            header_place.or(found.first().map(|(p, _)| *p)),
        ),
    }
}

/// The `access_token` parameter of a query string (`None` when absent). The name must be spelled exactly (a
/// percent-encoded spelling is refused: Envoy removes the parameter upstream by its literal name); the value is
/// percent-decoded once (`application/x-www-form-urlencoded`, so `+` is a space).
pub fn query_token(query: &str) -> Option<Found<'_>> {
    form_token(query.as_bytes(), &QUERY)
}

/// The refusal texts of one form-encoded place.
struct FormTexts {
    encoded: &'static str,
    /// Another spelling (`Access_Token`) or behind a `;` (`a=1;access_token=x`): some servers read those as the
    /// token, Envoy's parameter removal does not see them.
    spelled: &'static str,
    empty: &'static str,
    repeated: &'static str,
}

const QUERY: FormTexts = FormTexts {
    encoded: "the access_token parameter name is percent-encoded",
    spelled: "the access_token parameter is spelled otherwise or follows a ';'",
    empty: "the access_token parameter is empty",
    repeated: "the access_token parameter is repeated",
};

const BODY: FormTexts = FormTexts {
    encoded: "the access_token field name is percent-encoded",
    spelled: "the access_token field is spelled otherwise or follows a ';'",
    empty: "the access_token field is empty",
    repeated: "the access_token field is repeated",
};

/// The one `access_token` field of a form-encoded string.
fn form_token<'a>(form: &'a [u8], texts: &FormTexts) -> Option<Found<'a>> {
    let mut found: Option<Found<'a>> = None;
    for segment in form.split(|b| *b == b'&').filter(|s| !s.is_empty()) {
        let Some((name, value)) = url::form_urlencoded::parse(segment).next() else {
            continue;
        };
        if name != ACCESS_TOKEN_PARAM {
            let semicolon = segment
                .windows(ACCESS_TOKEN_PARAM.len() + 2)
                .any(|w| w[0] == b';' && w[1..].eq_ignore_ascii_case(b"access_token="));
            if reads_as_access_token(&name) || semicolon {
                return Some(Err(texts.spelled));
            }
            continue;
        }
        if found.is_some() {
            return Some(Err(texts.repeated));
        }
        let raw_name = segment.split(|b| *b == b'=').next().unwrap_or_default();
        found = Some(if raw_name != ACCESS_TOKEN_PARAM.as_bytes() {
            Err(texts.encoded)
        } else if value.is_empty() {
            Err(texts.empty)
        } else {
            // Borrow when nothing was decoded (the common case: a JWT has no reserved characters).
            let raw_value = segment.get(raw_name.len() + 1..).unwrap_or_default();
            match std::str::from_utf8(raw_value) {
                Ok(raw) if raw == value => Ok(Cow::Borrowed(raw)),
                _ => Ok(Cow::Owned(value.into_owned())),
            }
        });
    }
    found
}

/// Whether a form field name that is not exactly `access_token` is one some server reads as it ([`reads_as`]).
/// Envoy's removal of `access_token` would not touch it.
fn reads_as_access_token(name: &str) -> bool {
    reads_as(name, ACCESS_TOKEN_PARAM)
}

/// Whether some server reads the field or cookie name `name` as `target`: the same name in another case
/// (`Access_Token`; ASP.NET reads cookie names so), PHP's renaming (a leading space dropped, ` `, `.` and an
/// unclosed `[` read as `_`, `x[]` an array under `x`), or Rails' `x[...]`.
pub fn reads_as(name: &str, target: &str) -> bool {
    let name = name.trim_start();
    // `x[...]` is an array under `x`; a `[` never closed is read as `_` (PHP).
    let name = match name.split_once('[') {
        Some((head, rest)) if rest.contains(']') => head,
        _ => name,
    };
    name.len() == target.len()
        && name.bytes().zip(target.bytes()).all(|(a, b)| {
            let a = if matches!(a, b' ' | b'.' | b'[') {
                b'_'
            } else {
                a
            };
            a.eq_ignore_ascii_case(&b)
        })
}

/// Envoy's flag on a Check whose body it cut at `max_request_bytes` (`allow_partial_message`).
/// The `access_token` field of an RFC 6750 form body: only a non-GET (and non-HEAD) request with an
/// `application/x-www-form-urlencoded` body is read; `None` for any other request or a form without the field.
/// A form body Envoy did not send whole (not configured with `with_request_body`, cut short, or compressed) is a
/// refusal, never an allow: the token may be in the part we cannot see.
pub fn body_token<'a>(view: &CheckView<'a>) -> Option<Found<'a>> {
    if view.method.eq_ignore_ascii_case("GET") || view.method.eq_ignore_ascii_case("HEAD") {
        return None;
    }
    let mut types = view.header_values("content-type");
    let content_type = match (types.next(), types.next()) {
        (Some(Some(t)), None) => t,
        (None, _) => return None,
        _ => return Some(Err("the request has more than one Content-Type")),
    };
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return None;
    }
    // Every copy counts (Envoy sends repeated headers as they came): one `identity` before a `gzip` must not hide it.
    if view
        .header_values("content-encoding")
        .any(|e| e.is_none_or(|e| !e.trim().eq_ignore_ascii_case("identity")))
    {
        return Some(Err(
            "the form body is encoded (Content-Encoding) and cannot be read",
        ));
    }
    let body = view.body;
    let partial = view
        .header_values("x-envoy-auth-partial-body")
        .any(|p| p.is_none_or(|p| !p.trim().eq_ignore_ascii_case("false")));
    // The largest length any copy claims (Envoy refuses conflicting lengths itself; this never trusts the smaller).
    let length = view
        .header_values("content-length")
        .filter_map(|l| l?.trim().parse::<u64>().ok())
        .max();
    let short = |n: u64| n > body.len() as u64;
    if partial || length.is_some_and(short) || u64::try_from(view.size).is_ok_and(short) {
        if body.is_empty() && !partial {
            return Some(Err(
                "the form body was not sent to the authorizer (Envoy needs with_request_body)",
            ));
        }
        return Some(Err("the form body was truncated before the authorizer"));
    }
    if body.is_empty() {
        // Without a length, an empty body may be one Envoy did not send.
        return (length != Some(0)).then_some(Err(
            "the form body was not sent to the authorizer (Envoy needs with_request_body)",
        ));
    }
    form_token(body, &BODY)
}

/// The value of the cookie `name` (`None` when absent; two of that name are refused, and so is a `Cookie` header
/// that is not UTF-8, which may hold a second one).
pub fn cookie_token<'a>(cookies: &RequestCookies<'a>, name: &str) -> Option<Found<'a>> {
    if cookies.unreadable() {
        return Some(Err("a Cookie header is not valid text"));
    }
    let mut values = cookies.get_all(name);
    match (values.next(), values.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => Some(Err("the token cookie is repeated")),
        (Some(""), None) => Some(Err("the token cookie is empty")),
        (Some(v), None) => Some(Ok(Cow::Borrowed(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::request::{check_request, http_request};
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

    fn places(list: &[&str]) -> TokenPlaces {
        TokenPlaces {
            header: list.contains(&"header"),
            query: list.contains(&"query"),
            body: list.contains(&"body"),
            cookie: list.contains(&"cookie").then(|| "at".to_string()),
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
        let mut http = http_request(method, path, headers);
        http.body = body.into();
        check_request(http)
    }

    /// What `read` makes of a request for `list`: the token (or the refusal) and its place.
    fn read_as(list: &[&str], r: &CheckRequest) -> (Result<String, String>, Option<TokenPlace>) {
        let view = CheckView::new(r);
        let cookies = RequestCookies::from_values(view.header_values("cookie"));
        let (auth, place) = read(&view, &places(list), &cookies);
        let got = match auth {
            Authorization::Bearer(t) => Ok(t.into_owned()),
            Authorization::None => Err("none".into()),
            Authorization::Basic(_) => Err("basic".into()),
            Authorization::Malformed(why) => Err(why.into()),
        };
        (got, place)
    }

    fn ok(t: &str, p: TokenPlace) -> (Result<String, String>, Option<TokenPlace>) {
        (Ok(t.into()), Some(p))
    }

    fn refused(r: (Result<String, String>, Option<TokenPlace>), part: &str) {
        match &r.0 {
            Err(why) => assert!(why.contains(part), "{why:?} lacks {part:?}"),
            Ok(_) => panic!("a token where {part:?} was expected"),
        }
    }

    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

    #[test]
    fn each_place_reads_its_token() {
        let all = ["header", "query", "body", "cookie"];
        let bearer = format!("Bearer {JWT}");
        let r = req("GET", "/x", &[("authorization", bearer.as_str())], "");
        assert_eq!(read_as(&all, &r), ok(JWT, TokenPlace::Header));
        let r = req("GET", &format!("/x?a=1&access_token={JWT}&b=2"), &[], "");
        assert_eq!(read_as(&all, &r), ok(JWT, TokenPlace::Query));
        let body = format!("a=1&access_token={JWT}");
        let len = body.len().to_string();
        let r = req(
            "POST",
            "/x",
            &[FORM, ("content-length", len.as_str())],
            &body,
        );
        assert_eq!(read_as(&all, &r), ok(JWT, TokenPlace::Body));
        let cookie = format!("other=1; at={JWT}");
        let r = req("GET", "/x", &[("cookie", cookie.as_str())], "");
        assert_eq!(read_as(&all, &r), ok(JWT, TokenPlace::Cookie));
        let r = req("GET", "/x?a=1", &[("cookie", "other=1")], "");
        assert_eq!(read_as(&all, &r), (Err("none".into()), None));
    }

    /// The default reads the header alone: a token elsewhere is not looked at (it is not ours to read).
    #[test]
    fn the_default_reads_only_the_header() {
        let def = ["header"];
        let r = req(
            "GET",
            &format!("/x?access_token={JWT}"),
            &[("cookie", "at=x")],
            "",
        );
        assert_eq!(read_as(&def, &r), (Err("none".into()), None));
        let bearer = format!("Bearer {JWT}");
        let r = req(
            "GET",
            &format!("/x?access_token={JWT}"),
            &[("authorization", bearer.as_str())],
            "",
        );
        assert_eq!(read_as(&def, &r), ok(JWT, TokenPlace::Header));
        assert_eq!(TokenPlaces::default(), places(&def));
        // Basic stays client credentials, whatever the token places.
        let r = req("GET", "/x", &[("authorization", "Basic YTpi")], "");
        assert_eq!(read_as(&["query"], &r).0, Err("basic".into()));
    }

    #[test]
    fn a_header_token_where_the_header_is_not_listed_is_refused() {
        let bearer = format!("Bearer {JWT}");
        let r = req("GET", "/x", &[("authorization", bearer.as_str())], "");
        refused(
            read_as(&["query"], &r),
            "does not take a token in the Authorization header",
        );
        refused(
            read_as(&["cookie"], &r),
            "does not take a token in the Authorization header",
        );
    }

    /// RFC 6750: a client MUST NOT use more than one method; nor one method twice.
    #[test]
    fn two_places_or_a_repeat_are_refused() {
        let all = ["header", "query", "body", "cookie"];
        let bearer = format!("Bearer {JWT}");
        let q = format!("/x?access_token={JWT}");
        let c = format!("at={JWT}");
        let body = format!("access_token={JWT}");
        let len = body.len().to_string();
        for (r, list) in [
            (
                req("GET", &q, &[("authorization", bearer.as_str())], ""),
                &all[..],
            ),
            // The header is seen even where it is not a token place.
            (
                req("GET", &q, &[("authorization", bearer.as_str())], ""),
                &["query"][..],
            ),
            (
                req("GET", &q, &[("authorization", "Basic YTpi")], ""),
                &["query"][..],
            ),
            (req("GET", &q, &[("cookie", c.as_str())], ""), &all[..]),
            (
                req("POST", &q, &[FORM, ("content-length", len.as_str())], &body),
                &all[..],
            ),
            (
                req(
                    "POST",
                    "/x",
                    &[
                        FORM,
                        ("content-length", len.as_str()),
                        ("cookie", c.as_str()),
                    ],
                    &body,
                ),
                &all[..],
            ),
        ] {
            refused(read_as(list, &r), "more than one place");
        }
        let r = req(
            "GET",
            &format!("/x?access_token={JWT}&access_token={JWT}"),
            &[],
            "",
        );
        refused(read_as(&all, &r), "parameter is repeated");
        let r = req(
            "GET",
            &format!("/x?access_token={JWT}&access_token="),
            &[],
            "",
        );
        refused(read_as(&all, &r), "parameter is repeated");
        let twice = format!("access_token={JWT}&access_token=x");
        let len = twice.len().to_string();
        let r = req(
            "PUT",
            "/x",
            &[FORM, ("content-length", len.as_str())],
            &twice,
        );
        refused(read_as(&all, &r), "field is repeated");
        let r = req(
            "GET",
            "/x",
            &[("cookie", format!("at={JWT}; at=y").as_str())],
            "",
        );
        refused(read_as(&all, &r), "cookie is repeated");
        let r = req(
            "GET",
            "/x",
            &[("cookie", format!("at={JWT}").as_str()), ("Cookie", "at=y")],
            "",
        );
        refused(read_as(&all, &r), "cookie is repeated");
    }

    /// A `Cookie` header that is not UTF-8 may hold a second token cookie: refused, never skipped.
    #[test]
    fn a_cookie_header_that_is_not_text_is_refused() {
        use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
        let raw = |headers: &[(&str, &[u8])]| {
            let mut http = http_request("GET", "/x", &[]);
            http.header_map = Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        value: String::new(),
                        raw_value: v.to_vec(),
                    })
                    .collect(),
            });
            check_request(http)
        };
        let good = format!("at={JWT}");
        let second = [b"at=y; x=\xff".as_slice(), b"\xfe"].concat();
        let r = raw(&[("cookie", good.as_bytes()), ("cookie", &second)]);
        refused(read_as(&["header", "cookie"], &r), "not valid text");
        let r = raw(&[("cookie", &second)]);
        refused(read_as(&["cookie"], &r), "not valid text");
        // Where the policy reads no token cookie, nothing changes.
        let r = raw(&[("cookie", &second), ("authorization", b"Bearer abc")]);
        assert_eq!(read_as(&["header"], &r), ok("abc", TokenPlace::Header));
        // Read as text, the same two copies are a repeat.
        let r = raw(&[("cookie", good.as_bytes()), ("cookie", b"at=y")]);
        refused(read_as(&["cookie"], &r), "cookie is repeated");
    }

    #[test]
    fn query_values_are_percent_decoded_once_and_names_spelled_exactly() {
        let q = ["query"];
        // `%2B` is a plus, `%252B` stays `%2B` (decoded once), `+` is a space.
        let r = req("GET", "/x?access_token=a%2Bb%252Bc+d", &[], "");
        assert_eq!(read_as(&q, &r), ok("a+b%2Bc d", TokenPlace::Query));
        let r = req(
            "GET",
            "/x?access_token%5Ftoken=1&access%5Ftoken=abc",
            &[],
            "",
        );
        refused(read_as(&q, &r), "name is percent-encoded");
        let r = req("GET", "/x?access_token=", &[], "");
        refused(read_as(&q, &r), "parameter is empty");
        let r = req("GET", "/x?access_token", &[], "");
        refused(read_as(&q, &r), "parameter is empty");
        // Other names are other parameters...
        let r = req("GET", "/x?xaccess_token=abc&access_tokens=abc", &[], "");
        assert_eq!(read_as(&q, &r), (Err("none".into()), None));
        // ...but another case, or a `;` that some servers split on, is refused: an upstream could read it as the
        // token, and Envoy's removal of `access_token` would not touch it.
        for q_ in [
            "/x?Access_Token=abc",
            "/x?a=1;access_token=abc",
            "/x?a=1;ACCESS_TOKEN=abc",
            // PHP's and Rails' readings: `.`, ` ` (also `+`) read as `_`, a leading space dropped, an array
            "/x?access.token=abc",
            "/x?access+token=abc",
            "/x?access%20token=abc",
            "/x?+access_token=abc",
            "/x?access_token[]=abc",
            "/x?access_token[a]=abc",
            "/x?access[token=abc",
        ] {
            let r = req("GET", q_, &[], "");
            refused(read_as(&q, &r), "spelled otherwise");
        }
        // An unencoded value is borrowed, not copied.
        let r = req("GET", &format!("/x?access_token={JWT}"), &[], "");
        let view = CheckView::new(&r);
        assert!(matches!(
            query_token(view.query),
            Some(Ok(Cow::Borrowed(_)))
        ));
    }

    #[test]
    fn the_body_is_read_only_for_a_form_on_a_method_with_a_body() {
        let b = ["body"];
        let body = format!("access_token={JWT}");
        let len = body.len().to_string();
        let cl = ("content-length", len.as_str());
        let r = req(
            "POST",
            "/x",
            &[
                (
                    "content-type",
                    "Application/X-WWW-Form-URLEncoded; charset=UTF-8",
                ),
                cl,
            ],
            &body,
        );
        assert_eq!(read_as(&b, &r), ok(JWT, TokenPlace::Body));
        // GET (RFC 6750 2.2: MUST NOT), HEAD, other content types: the body is not a token place.
        for (method, ct) in [
            ("GET", FORM.1),
            ("HEAD", FORM.1),
            ("POST", "application/json"),
            ("POST", "multipart/form-data; boundary=x"),
            ("POST", "text/plain"),
        ] {
            let r = req(method, "/x", &[("content-type", ct), cl], &body);
            assert_eq!(read_as(&b, &r), (Err("none".into()), None), "{method} {ct}");
        }
        let r = req("POST", "/x", &[cl], &body);
        assert_eq!(
            read_as(&b, &r),
            (Err("none".into()), None),
            "no content type"
        );
        let r = req("POST", "/x", &[FORM, ("Content-Type", FORM.1), cl], &body);
        refused(read_as(&b, &r), "more than one Content-Type");
        let r = req(
            "POST",
            "/x",
            &[FORM, cl, ("content-encoding", "gzip")],
            &body,
        );
        refused(read_as(&b, &r), "Content-Encoding");
        // Every copy of the header counts: an `identity` first does not hide a `gzip`.
        let r = req(
            "POST",
            "/x",
            &[
                FORM,
                cl,
                ("content-encoding", "identity"),
                ("content-encoding", "gzip"),
            ],
            &body,
        );
        refused(read_as(&b, &r), "Content-Encoding");
        // A form without the field has no token.
        let r = req("POST", "/x", &[FORM, ("content-length", "3")], "a=1");
        assert_eq!(read_as(&b, &r), (Err("none".into()), None));
        let r = req("POST", "/x", &[FORM, ("content-length", "0")], "");
        assert_eq!(read_as(&b, &r), (Err("none".into()), None));
    }

    /// A form body Envoy did not send whole is a refusal: the token may be in what we cannot see.
    #[test]
    fn an_absent_or_cut_body_is_refused_never_skipped() {
        let b = ["header", "body"];
        let bearer = format!("Bearer {JWT}");
        let body = format!("access_token={JWT}");
        // Not sent (no with_request_body), with a length or without (chunked).
        let r = req(
            "POST",
            "/x",
            &[
                FORM,
                ("content-length", "40"),
                ("authorization", bearer.as_str()),
            ],
            "",
        );
        refused(read_as(&b, &r), "with_request_body");
        let r = req("POST", "/x", &[FORM, ("transfer-encoding", "chunked")], "");
        refused(read_as(&b, &r), "with_request_body");
        // Cut: Envoy's flag, a shorter body than the length, or than the size Envoy reports.
        let r = req(
            "POST",
            "/x",
            &[FORM, ("x-envoy-auth-partial-body", "true")],
            &body,
        );
        refused(read_as(&b, &r), "truncated");
        let r = req(
            "POST",
            "/x",
            &[
                FORM,
                ("x-envoy-auth-partial-body", "false"),
                ("x-envoy-auth-partial-body", "true"),
            ],
            &body,
        );
        refused(read_as(&b, &r), "truncated");
        let r = req("POST", "/x", &[FORM, ("content-length", "999")], &body);
        refused(read_as(&b, &r), "truncated");
        let mut http = http_request(
            "POST",
            "/x",
            &[FORM, ("x-envoy-auth-partial-body", "false")],
        );
        http.body = body.clone();
        http.size = 999;
        refused(read_as(&b, &check_request(http)), "truncated");
        // Whole: the flag says false and the size matches.
        let mut http = http_request(
            "POST",
            "/x",
            &[FORM, ("x-envoy-auth-partial-body", "false")],
        );
        http.body = body.clone();
        http.size = body.len() as i64;
        assert_eq!(read_as(&b, &check_request(http)), ok(JWT, TokenPlace::Body));
        // raw_body (pack_as_bytes) is read too.
        let mut http = http_request("POST", "/x", &[FORM]);
        http.raw_body = body.clone().into_bytes();
        assert_eq!(read_as(&b, &check_request(http)), ok(JWT, TokenPlace::Body));
    }

    #[test]
    fn cookie_values_are_taken_as_sent() {
        let c = ["cookie"];
        let r = req(
            "GET",
            "/x",
            &[("cookie", format!("a=1; at=\"{JWT}\"").as_str())],
            "",
        );
        assert_eq!(read_as(&c, &r), ok(JWT, TokenPlace::Cookie));
        let r = req("GET", "/x", &[("cookie", "at=")], "");
        refused(read_as(&c, &r), "cookie is empty");
        // Another cookie's name that merely starts alike is not ours.
        let r = req("GET", "/x", &[("cookie", "at_0=x; xat=y")], "");
        assert_eq!(read_as(&c, &r), (Err("none".into()), None));
    }

    /// No refusal text carries the token.
    #[test]
    fn refusals_never_carry_the_token() {
        let all = ["header", "query", "body", "cookie"];
        let secret = "secret-token-value";
        let cookie = format!("at={secret}; at={secret}");
        for r in [
            req(
                "GET",
                &format!("/x?access_token={secret}&access_token={secret}"),
                &[],
                "",
            ),
            req(
                "GET",
                &format!("/x?access_token={secret}"),
                &[("cookie", format!("at={secret}").as_str())],
                "",
            ),
            req("GET", "/x", &[("cookie", cookie.as_str())], ""),
        ] {
            let (got, _) = read_as(&all, &r);
            let why = got.unwrap_err();
            assert!(!why.contains(secret), "{why}");
        }
    }

    const CONFIG: &str = r#"
[providers.okta]
issuer = "https://idp.example.com"
client_id = "c"
client_secret = "s"
audiences = ["api"]

[policies.api]
provider = "okta"
auth_methods = ["bearer"]
"#;

    fn policy_errors(lines: &str) -> Result<TokenPlaces, Vec<String>> {
        let text = format!("{CONFIG}{lines}\n");
        match Config::from_toml(&text) {
            Ok(cfg) => Ok(cfg.policies[0].bearer_token_places.clone()),
            Err(e) => Err(e.0.iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn config_names_and_defaults() {
        assert_eq!(policy_errors(""), Ok(TokenPlaces::default()));
        let all = policy_errors(
            "bearer_token_param_type = [\"header\", \"query\", \"body\", \"cookie\"]\nbearer_token_cookie_name = \"at\"",
        );
        assert_eq!(all, Ok(places(&["header", "query", "body", "cookie"])));
        assert_eq!(
            policy_errors("bearer_token_param_type = [\"query\"]"),
            Ok(places(&["query"]))
        );
    }

    #[test]
    fn config_errors_are_listed_with_their_policy() {
        for (lines, want) in [
            (
                "bearer_token_param_type = [\"cookie\"]",
                "missing `bearer_token_cookie_name`",
            ),
            (
                "bearer_token_cookie_name = \"at\"",
                "does not list \"cookie\"",
            ),
            (
                "bearer_token_param_type = [\"query\"]\nbearer_token_cookie_name = \"at\"",
                "does not list \"cookie\"",
            ),
            ("bearer_token_param_type = [\"form\"]", "not \"form\""),
            ("bearer_token_param_type = []", "lists no place"),
            (
                "bearer_token_param_type = [\"cookie\"]\nbearer_token_cookie_name = \"a b\"",
                "not a valid cookie name",
            ),
            (
                "bearer_token_param_type = [\"cookie\"]\nbearer_token_cookie_name = \"oidc_authz_login\"",
                "login's own cookies",
            ),
        ] {
            let errs = policy_errors(lines).unwrap_err();
            assert!(
                errs.iter()
                    .any(|e| e.starts_with("policies.api") && e.contains(want)),
                "{lines}: {errs:?}"
            );
        }
        // A policy without token methods has no use for token places.
        let cc = CONFIG.replace("[\"bearer\"]", "[\"client_credentials\"]");
        let err =
            Config::from_toml(&format!("{cc}bearer_token_param_type = [\"query\"]\n")).unwrap_err();
        assert!(err.to_string().contains("needs auth_methods"), "{err}");
    }
}
