//! Cookie mechanics of the login: AES-256-GCM sealing, chunking, request parsing and `Set-Cookie` building.

use std::fmt;

use ::cookie::{Cookie, SameSite};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::config::Secret;
use crate::credentials::token_places::reads_as;
use crate::rng::{Rng as _, SystemRng};

/// Length of the random AES-GCM nonce that starts every sealed value.
const NONCE_LEN: usize = 12;
/// Length of the AES-GCM authentication tag that ends every sealed value.
const TAG_LEN: usize = 16;
/// Length of an AES-256 key.
const KEY_LEN: usize = 32;

/// Largest single cookie value we write before splitting into chunks.
pub const CHUNK_SIZE: usize = 3800;
/// Most chunks we ever write or clear.
pub const MAX_CHUNKS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Sealing
// ---------------------------------------------------------------------------------------------

/// Why the codec could not be built.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// A secret is not standard base64, does not decode to 32 bytes, or no secret was given.
    #[error("session_secret must be base64 of exactly 32 bytes")]
    BadSecret,
}

/// AES-256-GCM sealing of cookie values; the first key seals, every key opens (rotation).
#[derive(Clone)]
pub struct CookieCodec {
    /// The key that seals new values (and is tried first when opening).
    sealing: Aes256Gcm,
    /// Older keys, still accepted when opening so a rotation does not log everyone out.
    older: Vec<Aes256Gcm>,
}

impl fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieCodec")
            .field("keys", &(1 + self.older.len()))
            .finish()
    }
}

impl CookieCodec {
    /// Builds a codec from `session_secret` values, newest first: each is standard base64 (surrounding
    /// whitespace ignored) of exactly 32 bytes. An empty list is an error.
    pub fn new(secrets: &[Secret]) -> Result<Self, CodecError> {
        let mut keys = secrets.iter().map(key_from_secret);
        let sealing = keys.next().ok_or(CodecError::BadSecret)??;
        let older = keys.collect::<Result<Vec<_>, _>>()?;
        Ok(CookieCodec { sealing, older })
    }

    /// base64url-no-pad( 12-byte random nonce || ciphertext+tag ), with the cookie `name` as AAD (a value moved to
    /// another cookie name does not open).
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> String {
        // Always the system's CSPRNG, never an injected `Rng`: a nonce repeated under one key breaks AES-GCM.
        let mut nonce = [0u8; NONCE_LEN];
        SystemRng.fill(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: name.as_bytes(),
        };
        // Encryption only fails past AES-GCM's length limit (64 GiB); an empty value never opens.
        let Ok(ciphertext) = self.sealing.encrypt(Nonce::from_slice(&nonce), payload) else {
            return String::new();
        };
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        URL_SAFE_NO_PAD.encode(sealed)
    }

    /// The plaintext, or None for anything that does not authenticate under any key (tampered, truncated, garbage,
    /// wrong name).
    pub fn open(&self, name: &str, value: &str) -> Option<Vec<u8>> {
        let sealed = URL_SAFE_NO_PAD.decode(value.as_bytes()).ok()?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::from_slice(nonce);
        std::iter::once(&self.sealing)
            .chain(&self.older)
            .find_map(|key| {
                let payload = Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                };
                key.decrypt(nonce, payload).ok()
            })
    }
}

/// One AES-256-GCM key from a base64 secret.
fn key_from_secret(secret: &Secret) -> Result<Aes256Gcm, CodecError> {
    let bytes = STANDARD
        .decode(secret.expose().trim().as_bytes())
        .map_err(|_| CodecError::BadSecret)?;
    if bytes.len() != KEY_LEN {
        return Err(CodecError::BadSecret);
    }
    Aes256Gcm::new_from_slice(&bytes).map_err(|_| CodecError::BadSecret)
}

// ---------------------------------------------------------------------------------------------
// Set-Cookie
// ---------------------------------------------------------------------------------------------

/// Attributes of the cookies we set (always `Path=/`, `HttpOnly`, `SameSite=Lax`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    /// Adds `Secure`, so the browser only sends the cookie over HTTPS.
    pub secure: bool,
    /// `Max-Age` in seconds; `None` makes a browser-session cookie.
    pub max_age_secs: Option<u64>,
}

/// One `Set-Cookie` header value, knowing which cookie it sets or deletes. It reads as its header text; `Debug`
/// shows the name only (a value is a credential).
#[derive(Clone, PartialEq, Eq)]
pub struct SetCookie {
    name: String,
    header: String,
    deletes: bool,
}

impl SetCookie {
    /// The header text.
    pub fn into_header(self) -> String {
        self.header
    }
}

impl std::ops::Deref for SetCookie {
    type Target = str;
    fn deref(&self) -> &str {
        &self.header
    }
}

impl PartialEq<&str> for SetCookie {
    fn eq(&self, other: &&str) -> bool {
        self.header == *other
    }
}

impl fmt::Debug for SetCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetCookie")
            .field("name", &self.name)
            .field("deletes", &self.deletes)
            .finish()
    }
}

/// The header values to send for a request that carried `cookies`: deleting a cookie the browser does not have
/// is noise (the helpers below clear every chunk name they might have written), so only deletions of cookies the
/// request carried are kept.
pub fn for_request(set_cookies: Vec<SetCookie>, cookies: &RequestCookies<'_>) -> Vec<String> {
    set_cookies
        .into_iter()
        .filter(|c| !c.deletes || cookies.get(&c.name).is_some())
        .map(SetCookie::into_header)
        .collect()
}

/// `Set-Cookie` header values that store `value` under `name`: one cookie `name=value` when
/// `value.len() <= CHUNK_SIZE`, else `name_0`, `name_1`, ... (each <= CHUNK_SIZE bytes) AND a clearing
/// `name=; Max-Age=0` for the unchunked name; in both cases also clearing every chunk name that is not written, up
/// to MAX_CHUNKS, so a shrinking session never leaves stale chunks. None if the value needs more than MAX_CHUNKS
/// chunks.
pub fn set_cookie_headers(name: &str, value: &str, attrs: &CookieAttrs) -> Option<Vec<SetCookie>> {
    let mut headers = Vec::with_capacity(MAX_CHUNKS + 1);
    let written = if value.len() <= CHUNK_SIZE {
        headers.push(set_cookie(name.to_owned(), value, attrs));
        0
    } else {
        let chunks = split_chunks(value)?;
        for (i, chunk) in chunks.iter().enumerate() {
            headers.push(set_cookie(chunk_name(name, i), chunk, attrs));
        }
        headers.push(clear_cookie(name.to_owned(), attrs));
        chunks.len()
    };
    headers.extend((written..MAX_CHUNKS).map(|i| clear_cookie(chunk_name(name, i), attrs)));
    Some(headers)
}

/// One `Set-Cookie` value storing `value` under `name`, never chunked: None when `value` is over CHUNK_SIZE.
pub fn set_cookie_header(name: &str, value: &str, attrs: &CookieAttrs) -> Option<SetCookie> {
    (value.len() <= CHUNK_SIZE).then(|| set_cookie(name.to_owned(), value, attrs))
}

/// `Set-Cookie` values that delete `name` and all its chunk names (Max-Age=0, same Path/Secure/HttpOnly/SameSite).
pub fn clear_cookie_headers(name: &str, attrs: &CookieAttrs) -> Vec<SetCookie> {
    std::iter::once(clear_cookie(name.to_owned(), attrs))
        .chain((0..MAX_CHUNKS).map(|i| clear_cookie(chunk_name(name, i), attrs)))
        .collect()
}

/// The name of chunk `i` of cookie `name`.
fn chunk_name(name: &str, i: usize) -> String {
    format!("{name}_{i}")
}

/// `value` cut into pieces of at most CHUNK_SIZE bytes on character boundaries; None past MAX_CHUNKS pieces.
fn split_chunks(value: &str) -> Option<Vec<&str>> {
    let mut chunks = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        if chunks.len() == MAX_CHUNKS {
            return None;
        }
        let mut end = rest.len().min(CHUNK_SIZE);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at_checked(end)?;
        chunks.push(chunk);
        rest = tail;
    }
    Some(chunks)
}

/// One `Set-Cookie` value storing `value` under `name`.
fn set_cookie(name: String, value: &str, attrs: &CookieAttrs) -> SetCookie {
    let mut builder = base_cookie(name.clone(), value.to_owned(), attrs.secure);
    if let Some(secs) = attrs.max_age_secs {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        builder = builder.max_age(::cookie::time::Duration::seconds(secs));
    }
    SetCookie {
        name,
        header: builder.to_string(),
        deletes: false,
    }
}

/// One `Set-Cookie` value deleting `name`.
fn clear_cookie(name: String, attrs: &CookieAttrs) -> SetCookie {
    let header = base_cookie(name.clone(), String::new(), attrs.secure)
        .max_age(::cookie::time::Duration::ZERO)
        .to_string();
    SetCookie {
        name,
        header,
        deletes: true,
    }
}

/// The attributes every cookie of ours carries.
fn base_cookie(name: String, value: String, secure: bool) -> ::cookie::CookieBuilder<'static> {
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
}

// ---------------------------------------------------------------------------------------------
// Request cookies
// ---------------------------------------------------------------------------------------------

/// The cookies of a request, parsed from every `Cookie` header value (there may be several; `a=1; b=2` each).
#[derive(Default)]
pub struct RequestCookies<'a> {
    /// `(name, value)` in request order; the value is trimmed but keeps any surrounding quotes, so `without` can
    /// pass it on unchanged.
    pairs: Vec<(&'a str, &'a str)>,
    /// A `Cookie` header was not UTF-8 (Envoy's raw `header_map`): its cookies are unknown, so a check that a
    /// cookie appears once cannot be trusted ([`RequestCookies::unreadable`]).
    unreadable: bool,
}

impl fmt::Debug for RequestCookies<'_> {
    /// Names only: a cookie value may be a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|(name, _)| name))
            .finish()
    }
}

impl<'a> RequestCookies<'a> {
    /// Parses `Cookie` header values leniently: pairs without `=` or with an empty name are skipped, names and
    /// values are trimmed.
    pub fn parse(cookie_headers: &[&'a str]) -> Self {
        let pairs = cookie_headers
            .iter()
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                let name = name.trim();
                (!name.is_empty()).then(|| (name, value.trim()))
            })
            .collect();
        RequestCookies {
            pairs,
            unreadable: false,
        }
    }

    /// Parses the request's `Cookie` header values as [`CheckView::header_values`](crate::request::CheckView)
    /// gives them: a value that is not UTF-8 (`None`) is not read, but marks the cookies
    /// [`unreadable`](Self::unreadable).
    pub fn from_values(values: impl Iterator<Item = Option<&'a str>>) -> Self {
        let mut unreadable = false;
        let headers: Vec<&'a str> = values
            .filter_map(|v| {
                unreadable |= v.is_none();
                v
            })
            .collect();
        RequestCookies {
            unreadable,
            ..Self::parse(&headers)
        }
    }

    /// Whether a `Cookie` header could not be read (not UTF-8): a cookie that must appear once may be in it.
    pub fn unreadable(&self) -> bool {
        self.unreadable
    }

    /// The value of the first cookie called `name`, without surrounding double quotes.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| unquote(v))
    }

    /// The value stored under `name`: `name` itself when present and non-empty, else `name_0..name_{n-1}`
    /// concatenated (stops at the first missing index; None if `name_0` is absent or there are more than
    /// MAX_CHUNKS).
    pub fn read_chunked(&self, name: &str) -> Option<String> {
        if let Some(value) = self.get(name).filter(|v| !v.is_empty()) {
            return Some(value.to_owned());
        }
        let mut joined = String::new();
        let mut found = 0;
        for i in 0..=MAX_CHUNKS {
            match self.get(&chunk_name(name, i)) {
                None => break,
                Some(_) if i == MAX_CHUNKS => return None,
                Some(chunk) => {
                    joined.push_str(chunk);
                    found += 1;
                }
            }
        }
        (found > 0).then_some(joined)
    }

    /// The `Cookie` header value with every cookie named in `names` removed, along with their `_<digits>` chunk
    /// names; None when nothing is left (so the caller removes the header instead of sending an empty one).
    /// Malformed pairs skipped by `parse` are dropped too.
    pub fn without(&self, names: &[&str]) -> Option<String> {
        self.without_names(names, &[])
    }

    /// Like [`without`](Self::without), also dropping every cookie named as one in `exact` in any spelling a server
    /// reads as that name ([`reads_as`]: `AT`, `a.t` for `a_t`; not `at_1`) (a cookie that
    /// is never chunked, such as a policy's token cookie).
    pub fn without_names(&self, chunked: &[&str], exact: &[&str]) -> Option<String> {
        let mut kept = String::new();
        for (n, v) in self.pairs.iter().filter(|(n, _)| {
            !chunked.iter().any(|ours| is_name_or_chunk(n, ours))
                && !exact.iter().any(|ours| reads_as(n, ours))
        }) {
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(n);
            kept.push('=');
            kept.push_str(v);
        }
        (!kept.is_empty()).then_some(kept)
    }

    /// The value of every cookie called `name`, in request order, without surrounding double quotes.
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.pairs
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| unquote(v))
    }

    /// Whether any cookie is named `name` as some server reads cookie names (any case, PHP's `.`/` ` for `_`:
    /// [`reads_as`]).
    pub fn has_spelling_of(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| reads_as(n, name))
    }

    /// Whether any cookie named `name` or `name_<digits>` is present.
    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| is_name_or_chunk(n, name))
    }
}

/// `value` without one pair of surrounding double quotes.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Whether `candidate` is `name` or `name_<digits>`.
fn is_name_or_chunk(candidate: &str, name: &str) -> bool {
    match candidate.strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('_')
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8, len: usize) -> Secret {
        Secret::new(STANDARD.encode(vec![byte; len]))
    }

    fn codec(bytes: &[u8]) -> CookieCodec {
        let secrets: Vec<Secret> = bytes.iter().map(|b| secret(*b, 32)).collect();
        CookieCodec::new(&secrets).expect("valid secrets")
    }

    fn attrs(secure: bool, max_age_secs: Option<u64>) -> CookieAttrs {
        CookieAttrs {
            secure,
            max_age_secs,
        }
    }

    /// The `name=value` pairs a browser would keep from `Set-Cookie` values (clearing ones dropped).
    fn browser_jar(headers: &[SetCookie]) -> String {
        headers
            .iter()
            .filter(|h| !h.contains("Max-Age=0"))
            .map(|h| h.split(';').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn assert_attributes(header: &str, secure: bool) {
        assert!(header.contains("; HttpOnly"), "{header}");
        assert!(header.contains("; SameSite=Lax"), "{header}");
        assert!(header.contains("; Path=/"), "{header}");
        assert_eq!(header.contains("; Secure"), secure, "{header}");
    }

    #[test]
    fn seal_open_round_trip_with_random_nonce() {
        let c = codec(&[1]);
        let a = c.seal("session", b"hello world");
        let b = c.seal("session", b"hello world");
        assert_ne!(a, b);
        assert_eq!(c.open("session", &a).as_deref(), Some(&b"hello world"[..]));
        assert_eq!(c.open("session", &b).as_deref(), Some(&b"hello world"[..]));
        let empty = c.seal("session", b"");
        assert_eq!(c.open("session", &empty).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn any_bit_flip_fails_to_open() {
        let c = codec(&[1]);
        let sealed = c.seal("session", b"tiny");
        let bytes = URL_SAFE_NO_PAD.decode(&sealed).expect("our own encoding");
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut tampered = bytes.clone();
                tampered[i] ^= 1 << bit;
                let value = URL_SAFE_NO_PAD.encode(&tampered);
                assert!(c.open("session", &value).is_none(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn truncated_empty_and_garbage_fail_to_open() {
        let c = codec(&[1]);
        let sealed = c.seal("session", b"some payload");
        for len in 0..sealed.len() {
            assert!(c.open("session", &sealed[..len]).is_none(), "prefix {len}");
        }
        assert!(c.open("session", "").is_none());
        assert!(c.open("session", "not base64 at all!").is_none());
        assert!(c.open("session", "====").is_none());
        assert!(c.open("session", &format!("{sealed}=")).is_none());
        assert!(c.open("session", "é").is_none());
    }

    #[test]
    fn value_is_bound_to_cookie_name() {
        let c = codec(&[1]);
        let sealed = c.seal("a", b"payload");
        assert!(c.open("a", &sealed).is_some());
        assert!(c.open("b", &sealed).is_none());
    }

    #[test]
    fn rotation_opens_old_and_seals_with_first() {
        let (new, old) = (2, 1);
        let old_only = codec(&[old]);
        let rotated = codec(&[new, old]);
        let new_only = codec(&[new]);

        let by_old = old_only.seal("s", b"legacy");
        assert_eq!(rotated.open("s", &by_old).as_deref(), Some(&b"legacy"[..]));

        let by_rotated = rotated.seal("s", b"fresh");
        assert!(old_only.open("s", &by_rotated).is_none());
        assert_eq!(
            new_only.open("s", &by_rotated).as_deref(),
            Some(&b"fresh"[..])
        );
    }

    #[test]
    fn bad_secrets_are_rejected() {
        let good = secret(7, 32);
        let cases: Vec<Vec<Secret>> = vec![
            vec![Secret::new("this is not base64!")],
            vec![secret(7, 31)],
            vec![secret(7, 33)],
            vec![],
            vec![good.clone(), secret(7, 16)],
            vec![Secret::new(URL_SAFE_NO_PAD.encode([7u8; 32]))],
        ];
        for secrets in cases {
            assert!(matches!(
                CookieCodec::new(&secrets),
                Err(CodecError::BadSecret)
            ));
        }
        let padded = Secret::new(format!("  {}\n", good.expose()));
        assert!(CookieCodec::new(&[padded]).is_ok());
    }

    #[test]
    fn debug_shows_only_key_count() {
        let c = codec(&[1, 2, 3]);
        assert_eq!(format!("{c:?}"), "CookieCodec { keys: 3 }");
    }

    #[test]
    fn small_value_is_one_cookie_plus_chunk_clears() {
        let headers = set_cookie_headers("name", "v", &attrs(false, None)).expect("fits");
        assert_eq!(headers.len(), 1 + MAX_CHUNKS);
        assert_eq!(headers[0], "name=v; HttpOnly; SameSite=Lax; Path=/");
        for (i, header) in headers[1..].iter().enumerate() {
            assert!(
                header.starts_with(&format!("name_{i}=;")),
                "{}",
                &header[..]
            );
            assert!(header.contains("; Max-Age=0"), "{}", &header[..]);
        }
        for header in &headers {
            assert_attributes(header, false);
        }

        let headers = set_cookie_headers("name", "v", &attrs(true, Some(3600))).expect("fits");
        assert_eq!(
            headers[0],
            "name=v; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=3600"
        );
        for header in &headers {
            assert_attributes(header, true);
        }
    }

    #[test]
    fn large_value_is_chunked() {
        let value = "x".repeat(10_000);
        let headers = set_cookie_headers("name", &value, &attrs(true, Some(60))).expect("fits");
        let names: Vec<&str> = headers
            .iter()
            .map(|h| h.split('=').next().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "name_0", "name_1", "name_2", "name", "name_3", "name_4", "name_5", "name_6",
                "name_7"
            ]
        );
        for header in &headers[..3] {
            assert!(header.contains("; Max-Age=60"), "{}", &header[..]);
            let value = header
                .split(';')
                .next()
                .and_then(|p| p.split_once('='))
                .map(|(_, v)| v)
                .unwrap_or_default();
            assert!(value.len() <= CHUNK_SIZE);
        }
        for header in &headers[3..] {
            assert!(header.contains("; Max-Age=0"), "{}", &header[..]);
        }
        for header in &headers {
            assert_attributes(header, true);
        }
    }

    #[test]
    fn chunk_limits() {
        let exact = "x".repeat(CHUNK_SIZE);
        let headers = set_cookie_headers("s", &exact, &attrs(false, None)).expect("fits");
        assert!(headers[0].starts_with("s=x"));

        let max = "x".repeat(CHUNK_SIZE * MAX_CHUNKS);
        let headers = set_cookie_headers("s", &max, &attrs(false, None)).expect("fits");
        assert_eq!(headers.len(), MAX_CHUNKS + 1);

        let too_big = "x".repeat(CHUNK_SIZE * MAX_CHUNKS + 1);
        assert!(set_cookie_headers("s", &too_big, &attrs(false, None)).is_none());
    }

    #[test]
    fn multibyte_values_split_on_char_boundaries() {
        let value = "é".repeat(CHUNK_SIZE);
        let headers = set_cookie_headers("s", &value, &attrs(false, None)).expect("fits");
        let jar = browser_jar(&headers);
        let cookies = RequestCookies::parse(&[&jar]);
        assert_eq!(cookies.read_chunked("s").as_deref(), Some(value.as_str()));
    }

    #[test]
    fn single_cookie_is_never_chunked() {
        let fits = "x".repeat(CHUNK_SIZE);
        let header = set_cookie_header("login", &fits, &attrs(true, Some(300))).expect("fits");
        assert!(header.starts_with("login=x"), "{}", &header[..]);
        assert_attributes(&header, true);
        assert!(set_cookie_header("login", &format!("{fits}x"), &attrs(true, None)).is_none());
    }

    #[test]
    fn clear_headers_cover_name_and_every_chunk() {
        let headers = clear_cookie_headers("session", &attrs(true, Some(60)));
        assert_eq!(headers.len(), 1 + MAX_CHUNKS);
        assert!(headers[0].starts_with("session=;"));
        for (i, header) in headers[1..].iter().enumerate() {
            assert!(
                header.starts_with(&format!("session_{i}=;")),
                "{}",
                &header[..]
            );
        }
        for header in &headers {
            assert!(header.contains("; Max-Age=0"), "{}", &header[..]);
            assert!(!header.contains("Max-Age=60"), "{}", &header[..]);
            assert_attributes(header, true);
        }
    }

    #[test]
    fn parse_is_lenient() {
        let headers = [
            "a=1; b = 2 ;;=x; novalue; c=\"quoted\"",
            "  d=4;a=second; e=; f=\"",
        ];
        let cookies = RequestCookies::parse(&headers);
        assert_eq!(cookies.get("a"), Some("1"));
        assert_eq!(cookies.get("b"), Some("2"));
        assert_eq!(cookies.get("c"), Some("quoted"));
        assert_eq!(cookies.get("d"), Some("4"));
        assert_eq!(cookies.get("e"), Some(""));
        assert_eq!(cookies.get("f"), Some("\""));
        assert_eq!(cookies.get("novalue"), None);
        assert_eq!(cookies.get(""), None);
        assert_eq!(
            format!("{cookies:?}"),
            r#"["a", "b", "c", "d", "a", "e", "f"]"#
        );
        assert!(RequestCookies::parse(&[]).get("a").is_none());
    }

    #[test]
    fn read_chunked_reassembles_what_was_written() {
        let c = codec(&[1]);
        let big = c.seal("session", &vec![42u8; 9000]);
        for value in [c.seal("session", b"small"), big] {
            let headers = set_cookie_headers("session", &value, &attrs(true, None)).expect("fits");
            let jar = browser_jar(&headers);
            let cookies = RequestCookies::parse(&["other=1", &jar]);
            let read = cookies.read_chunked("session").expect("present");
            assert_eq!(read, value);
            assert!(c.open("session", &read).is_some());
        }
    }

    #[test]
    fn read_chunked_edge_cases() {
        let cookies = RequestCookies::parse(&["session_1=b; session_0=a; session_3=d"]);
        assert_eq!(cookies.read_chunked("session").as_deref(), Some("ab"));

        let cookies = RequestCookies::parse(&["session_1=b"]);
        assert_eq!(cookies.read_chunked("session"), None);

        let cookies = RequestCookies::parse(&["session=whole; session_0=a"]);
        assert_eq!(cookies.read_chunked("session").as_deref(), Some("whole"));

        let cookies = RequestCookies::parse(&["session=; session_0=a"]);
        assert_eq!(cookies.read_chunked("session").as_deref(), Some("a"));

        let too_many: Vec<String> = (0..=MAX_CHUNKS).map(|i| format!("session_{i}=x")).collect();
        let too_many = too_many.join("; ");
        let cookies = RequestCookies::parse(&[&too_many]);
        assert_eq!(cookies.read_chunked("session"), None);

        assert_eq!(
            RequestCookies::parse(&["x=1"]).read_chunked("session"),
            None
        );
    }

    #[test]
    fn without_removes_ours_and_keeps_the_rest() {
        let cookies = RequestCookies::parse(&[
            "session=a; sessionx=1; session_0=b",
            "other=\"2\"; session_1=c; session_=z; session_1a=y",
        ]);
        assert_eq!(
            cookies.without(&["session"]).as_deref(),
            Some("sessionx=1; other=\"2\"; session_=z; session_1a=y")
        );
        assert_eq!(
            cookies
                .without(&["session", "other", "oidc_state"])
                .as_deref(),
            Some("sessionx=1; session_=z; session_1a=y")
        );

        let ours = RequestCookies::parse(&["session_0=a; session_1=b", "state=s"]);
        assert_eq!(ours.without(&["session", "state"]), None);
        assert_eq!(RequestCookies::parse(&[]).without(&["session"]), None);
    }

    #[test]
    fn has_matches_name_and_chunks() {
        let cookies = RequestCookies::parse(&["session_3=x; sessionx=1; state_=2"]);
        assert!(cookies.has("session"));
        assert!(!cookies.has("sessio"));
        assert!(!cookies.has("state"));
        assert!(RequestCookies::parse(&["state=1"]).has("state"));
        assert!(!RequestCookies::parse(&[]).has("session"));
    }
}
