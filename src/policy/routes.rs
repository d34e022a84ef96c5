//! The `[[routes]]` table: plain data with a ranked `find()`, used when Envoy names no policy.
//!
//! Ranking (most specific wins, ties go to the earlier entry): exact host over `*.` wildcard over any host
//! (longer wildcard first); then exact path over regex over prefix (longer prefix first); then a route that
//! lists methods over one that does not. A prefix matches only at a path-segment boundary.

use std::sync::Arc;

use http::Method;
use regex::Regex;

/// A host matcher.
#[derive(Debug, Clone)]
pub enum HostMatch {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`
    Suffix(String),
}

impl HostMatch {
    /// Parses `name` or `*.suffix`; lower-cases.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if let Some(rest) = s.strip_prefix("*.") {
            valid(rest).then(|| HostMatch::Suffix(format!(".{rest}")))
        } else {
            valid(&s).then_some(HostMatch::Exact(s))
        }
    }

    fn rank(&self, host: &str) -> Option<(u8, usize)> {
        match self {
            HostMatch::Exact(h) => (h == host).then_some((2, h.len())),
            HostMatch::Suffix(sfx) => {
                (host.len() > sfx.len() && host.ends_with(sfx.as_str())).then_some((1, sfx.len()))
            }
        }
    }
}

/// A path matcher.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this at a segment boundary (stored without a trailing `/`, except `/` itself).
    Prefix(String),
    /// The whole path matches this (anchored at compile time).
    Regex(Regex),
}

impl PathMatch {
    /// A prefix matcher, normalising a trailing `/`.
    pub fn prefix(p: &str) -> Self {
        let trimmed = p.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.to_string()
        })
    }

    fn rank(&self, path: &str) -> Option<(u8, usize)> {
        match self {
            PathMatch::Exact(p) => (p == path).then_some((3, p.len())),
            PathMatch::Regex(re) => re.is_match(path).then_some((2, re.as_str().len())),
            PathMatch::Prefix(p) if p == "/" => path.starts_with('/').then_some((1, 1)),
            PathMatch::Prefix(p) => {
                let ok = path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'));
                ok.then_some((1, p.len()))
            }
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    /// Any of these hosts (empty: any host).
    pub hosts: Vec<HostMatch>,
    /// The path matcher.
    pub path: PathMatch,
    /// Any of these methods (empty: any method).
    pub methods: Vec<Method>,
    /// Index of the policy in [`crate::config::Config::policies`].
    pub policy: usize,
}

type Rank = ((u8, usize), (u8, usize), u8);

impl Route {
    fn rank(&self, host: &str, path: &str, method: &str) -> Option<Rank> {
        let host_rank = if self.hosts.is_empty() {
            (0, 0)
        } else {
            self.hosts.iter().filter_map(|h| h.rank(host)).max()?
        };
        let path_rank = self.path.rank(path)?;
        let method_rank = if self.methods.is_empty() {
            0
        } else if self.methods.iter().any(|m| m.as_str() == method) {
            1
        } else {
            return None;
        };
        Some((host_rank, path_rank, method_rank))
    }
}

/// The ordered routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Arc<[Route]>,
}

impl RouteTable {
    /// Wraps routes in config order.
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable {
            routes: routes.into(),
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The best route for a request. `host` may carry a port; `path` must not carry the query.
    pub fn find(&self, host: &str, path: &str, method: &str) -> Option<&Route> {
        let host = normalize_host(host);
        let mut best: Option<(Rank, &Route)> = None;
        for r in self.routes.iter() {
            if let Some(rank) = r.rank(&host, path, method)
                && best.as_ref().is_none_or(|(b, _)| rank > *b)
            {
                best = Some((rank, r));
            }
        }
        best.map(|(_, r)| r)
    }
}

/// Lower-cases a host and strips its port (`[::1]:80` -> `[::1]`, `a.com:443` -> `a.com`).
fn normalize_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hosts: &[&str], path: PathMatch, methods: &[&str], policy: usize) -> Route {
        Route {
            hosts: hosts.iter().map(|h| HostMatch::parse(h).unwrap()).collect(),
            path,
            methods: methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect(),
            policy,
        }
    }

    #[test]
    fn prefix_at_segment_boundary() {
        let t = RouteTable::new(vec![route(&[], PathMatch::prefix("/api"), &[], 0)]);
        assert!(t.find("h", "/api", "GET").is_some());
        assert!(t.find("h", "/api/", "GET").is_some());
        assert!(t.find("h", "/api/v1/x", "GET").is_some());
        assert!(t.find("h", "/apiary", "GET").is_none());
        assert!(t.find("h", "/", "GET").is_none());
        let t = RouteTable::new(vec![route(&[], PathMatch::prefix("/api/"), &[], 0)]);
        assert!(t.find("h", "/api/x", "GET").is_some());
        assert!(t.find("h", "/apix", "GET").is_none());
    }

    #[test]
    fn ranking() {
        let t = RouteTable::new(vec![
            route(&[], PathMatch::prefix("/"), &[], 0),
            route(&[], PathMatch::prefix("/api"), &[], 1),
            route(&[], PathMatch::prefix("/api/admin"), &[], 2),
            route(&[], PathMatch::Exact("/api/admin/x".into()), &[], 3),
            route(
                &[],
                PathMatch::Regex(Regex::new("^(?:/api/v[0-9]+/.*)$").unwrap()),
                &[],
                4,
            ),
            route(&["*.example.com"], PathMatch::prefix("/"), &[], 5),
            route(&["api.example.com"], PathMatch::prefix("/"), &[], 6),
            route(&["api.example.com"], PathMatch::prefix("/"), &["POST"], 7),
        ]);
        let p = |host: &str, path: &str, m: &str| t.find(host, path, m).map(|r| r.policy);
        assert_eq!(p("h", "/other", "GET"), Some(0));
        assert_eq!(p("h", "/api/x", "GET"), Some(1));
        assert_eq!(p("h", "/api/admin/y", "GET"), Some(2));
        assert_eq!(p("h", "/api/admin/x", "GET"), Some(3));
        assert_eq!(p("h", "/api/v2/x", "GET"), Some(4));
        assert_eq!(p("www.example.com", "/api/admin/x", "GET"), Some(5));
        assert_eq!(p("example.com", "/", "GET"), Some(0));
        assert_eq!(p("API.Example.com:8443", "/", "GET"), Some(6));
        assert_eq!(p("api.example.com", "/", "POST"), Some(7));
    }

    #[test]
    fn unmatched_is_none() {
        let t = RouteTable::new(vec![route(
            &["a.com"],
            PathMatch::prefix("/x"),
            &["GET"],
            0,
        )]);
        assert!(t.find("a.com", "/x", "POST").is_none());
        assert!(t.find("b.com", "/x", "GET").is_none());
        assert!(RouteTable::default().find("a.com", "/", "GET").is_none());
    }

    #[test]
    fn host_parsing() {
        assert!(HostMatch::parse("*.").is_none());
        assert!(HostMatch::parse("a b").is_none());
        assert!(HostMatch::parse("").is_none());
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    }
}
