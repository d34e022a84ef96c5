//! The request's credentials, read once per Check into one value every auth method reads: the `Authorization`
//! header, the policy's client-credential headers, the cookies, and what the request is for (the login's
//! callback or logout path, or anything else).

pub mod token_places;

use std::borrow::Cow;

use crate::flow::client_credentials::{self, ClientCreds, CredsError};
use crate::login::cookie::RequestCookies;
use crate::policy::runtime::PolicyRuntime;
use crate::request::CheckView;

/// The request's credentials: what the `Authorization` header carries, or a bearer token from another place the
/// policy names ([`token_places`]). `Debug` shows the scheme, never the credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// No `Authorization` header (and no token elsewhere).
    None,
    /// `Bearer <token>`, or a token from the query, the form body or a cookie (percent-decoded when it was
    /// encoded, hence owned then).
    Bearer(Cow<'a, str>),
    /// `Basic <base64>`.
    Basic(&'a str),
    /// Present but unusable (repeated, not UTF-8, unknown scheme, empty, in more than one place).
    Malformed(&'static str),
}

impl std::fmt::Debug for Authorization<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authorization::None => f.write_str("None"),
            Authorization::Bearer(_) => f.write_str("Bearer(..)"),
            Authorization::Basic(_) => f.write_str("Basic(..)"),
            Authorization::Malformed(why) => write!(f, "Malformed({why:?})"),
        }
    }
}

/// What the request is for, on a login policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// The login callback (`redirect_uri`'s path).
    Callback,
    /// The logout path.
    Logout,
    /// The back-channel logout path (the provider's POST of a logout token).
    BackchannelLogout,
    /// Anything else (the protected resource).
    Resource,
}

/// Everything a Check's auth methods read from the request, parsed once.
#[derive(Debug)]
pub struct Credentials<'a> {
    /// The `Authorization` header, or the token from another place the policy reads (`bearer_token_param_type`).
    pub authorization: Authorization<'a>,
    /// Where `authorization` came from (`None`: no credentials); `Query` removes the parameter upstream.
    pub token_place: Option<token_places::TokenPlace>,
    /// Client credentials from the policy's headers (`client_credentials_param_type = ["header"]`); `None` when
    /// the client sent neither header (or the policy names none).
    pub header_client: Option<Result<ClientCreds, CredsError>>,
    /// The request's cookies.
    pub cookies: RequestCookies<'a>,
    /// What the request is for.
    pub intent: Intent,
}

impl<'a> Credentials<'a> {
    /// Reads the request for the policy `rt` (its cookies only when it has a login or a token cookie: nothing else
    /// reads them).
    pub fn parse(view: &CheckView<'a>, rt: &PolicyRuntime) -> Self {
        let policy = &rt.policy;
        let intent = match &rt.login {
            Some(flow) if view.path == flow.settings.redirect_uri.path() => Intent::Callback,
            Some(_) if policy.logout_path.as_deref() == Some(view.path) => Intent::Logout,
            Some(flow) if flow.settings.backchannel_logout_path.as_deref() == Some(view.path) => {
                Intent::BackchannelLogout
            }
            _ => Intent::Resource,
        };
        let places = &policy.bearer_token_places;
        let cookies = if rt.login.is_some() || places.cookie.is_some() {
            RequestCookies::from_values(view.header_values("cookie"))
        } else {
            RequestCookies::default()
        };
        let (authorization, token_place) = token_places::read(view, places, &cookies);
        Credentials {
            authorization,
            token_place,
            header_client: client_credentials::from_headers(view, policy),
            cookies,
            intent,
        }
    }

    /// Whether the request carries a token or client credentials (which win over a session).
    pub fn has_token(&self) -> bool {
        self.authorization != Authorization::None || self.header_client.is_some()
    }
}

/// Reads the `Authorization` header alone.
pub fn authorization<'a>(view: &CheckView<'a>) -> Authorization<'a> {
    let mut values = view.header_values("authorization");
    let value = match (values.next(), values.next()) {
        (None, _) => return Authorization::None,
        (Some(Some(v)), None) => v,
        (Some(None), None) => {
            return Authorization::Malformed("the Authorization header is not valid text");
        }
        _ => return Authorization::Malformed("more than one Authorization header"),
    };
    // Envoy's merged map joins repeats with ','; a token never contains one.
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if rest.is_empty() {
        return Authorization::Malformed("the Authorization header has no credentials");
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Authorization::Bearer(Cow::Borrowed(rest))
    } else if scheme.eq_ignore_ascii_case("basic") {
        Authorization::Basic(rest)
    } else {
        Authorization::Malformed("unsupported Authorization scheme")
    }
}
