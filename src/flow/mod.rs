//! The auth methods. Each turns credentials from the request into verified claims or a reason to refuse.

pub mod authcode;
pub mod bearer;
pub mod claims;
pub mod client_credentials;
pub mod introspection;
pub mod session;

use crate::request::CheckView;

/// What the `Authorization` header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// No `Authorization` header.
    None,
    /// `Bearer <token>`.
    Bearer(&'a str),
    /// `Basic <base64>`.
    Basic(&'a str),
    /// Present but unusable (repeated, not UTF-8, unknown scheme, empty).
    Malformed(&'static str),
}

/// Reads the `Authorization` header.
pub fn authorization<'a>(view: &CheckView<'a>) -> Credential<'a> {
    let values = view.header_values("authorization");
    let value = match values.as_slice() {
        [] => return Credential::None,
        [Some(v)] => *v,
        [None] => return Credential::Malformed("the Authorization header is not valid text"),
        _ => return Credential::Malformed("more than one Authorization header"),
    };
    // Envoy's merged map joins repeats with ','; a token never contains one.
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if rest.is_empty() {
        return Credential::Malformed("the Authorization header has no credentials");
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Credential::Bearer(rest)
    } else if scheme.eq_ignore_ascii_case("basic") {
        Credential::Basic(rest)
    } else {
        Credential::Malformed("unsupported Authorization scheme")
    }
}
