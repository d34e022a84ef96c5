//! The `[[routes]]` table: plain data with a ranked `find()`, used when Envoy names no policy.
//!
//! Ranking (most specific wins, ties go to the earlier entry): exact host over `*.` wildcard over any host
//! (longer wildcard first); then exact path over regex over prefix (longer prefix first); then a route that
//! lists methods over one that does not. A prefix matches only at a path-segment boundary.
//!
//! `find()` does not scan the table: an index built once (hosts and paths in hash maps, each host group's regexes
//! in one `RegexSet`) yields the few routes that can match, and only those are ranked.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use regex::{Regex, RegexSet};

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

/// The ordered routes, and the index that finds the best one without scanning them all.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// The routes in config order (the order breaks ties).
    routes: Arc<[Route]>,
    /// Which routes may match a request, by host then path.
    index: Arc<RouteIndex>,
}

impl RouteTable {
    /// Wraps routes in config order.
    pub fn new(routes: Vec<Route>) -> Self {
        let index = Arc::new(RouteIndex::new(&routes));
        RouteTable {
            routes: routes.into(),
            index,
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
    ///
    /// The index narrows the routes to those whose host and path can match (hash lookups, one [`RegexSet`] pass
    /// per host group), and only those are ranked; the answer is the one ranking every route would give.
    pub fn find(&self, host: &str, path: &str, method: &str) -> Option<&Route> {
        let host = normalize_host(host);
        self.index
            .find(&self.routes, &host, path, method)
            .map(|i| &self.routes[i])
    }
}

/// The routes that can match a request, by host: groups tried from the best host rank down (exact host, `*.`
/// suffixes longest first, any host). A route listing several hosts sits in each of their groups; its rank is
/// still its best host's, so the first group holding a match holds the best one.
#[derive(Debug, Default)]
struct RouteIndex {
    /// Routes naming this exact host.
    exact: HashMap<String, PathIndex>,
    /// Routes naming this `*.` suffix (stored as `.suffix`).
    suffix: HashMap<String, PathIndex>,
    /// Whether every suffix starts with `.` (as parsed ones do): then only the host's dots need looking at.
    dotted_suffixes: bool,
    /// Routes naming no host.
    any: PathIndex,
}

impl RouteIndex {
    fn new(routes: &[Route]) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut suffix: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if r.hosts.is_empty() {
                any.push(i);
            }
            for h in &r.hosts {
                let group = match h {
                    HostMatch::Exact(h) => exact.entry(h.clone()).or_default(),
                    HostMatch::Suffix(s) => suffix.entry(s.clone()).or_default(),
                };
                if group.last() != Some(&i) {
                    group.push(i);
                }
            }
        }
        let build = |m: HashMap<String, Vec<usize>>| {
            m.into_iter()
                .map(|(k, v)| (k, PathIndex::new(routes, v)))
                .collect()
        };
        RouteIndex {
            dotted_suffixes: suffix.keys().all(|s| s.starts_with('.')),
            exact: build(exact),
            suffix: build(suffix),
            any: PathIndex::new(routes, any),
        }
    }

    /// The index of the best route for a normalised host.
    fn find(&self, routes: &[Route], host: &str, path: &str, method: &str) -> Option<usize> {
        if let Some(g) = self.exact.get(host)
            && let Some(i) = g.best(routes, host, path, method)
        {
            return Some(i);
        }
        if !self.suffix.is_empty() {
            // Longest suffix first: a suffix is `host[at..]` with at least one byte before it.
            for at in 1..=host.len() {
                if !host.is_char_boundary(at)
                    || (self.dotted_suffixes && host.as_bytes().get(at) != Some(&b'.'))
                {
                    continue;
                }
                if let Some(g) = self.suffix.get(&host[at..])
                    && let Some(i) = g.best(routes, host, path, method)
                {
                    return Some(i);
                }
            }
        }
        self.any.best(routes, host, path, method)
    }
}

/// The routes of one host group, by path: exact paths and prefixes in hash maps, regexes in one [`RegexSet`].
#[derive(Debug, Default)]
struct PathIndex {
    /// Routes whose path equals the key.
    exact: HashMap<String, Vec<usize>>,
    /// Routes whose prefix is the key.
    prefix: HashMap<String, Vec<usize>>,
    /// The regex routes, in the order of `regexes`' patterns.
    regex_routes: Vec<usize>,
    /// All the group's path regexes, matched in one pass (`None` when the set would be too large to build: then
    /// each regex of `regex_routes` is tried in turn).
    regexes: Option<RegexSet>,
}

impl PathIndex {
    fn new(routes: &[Route], members: Vec<usize>) -> Self {
        let mut idx = PathIndex::default();
        let mut patterns = Vec::new();
        for i in members {
            match &routes[i].path {
                PathMatch::Exact(p) => idx.exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(p) => idx.prefix.entry(p.clone()).or_default().push(i),
                PathMatch::Regex(re) => {
                    idx.regex_routes.push(i);
                    patterns.push(re.as_str());
                }
            }
        }
        if !patterns.is_empty() {
            idx.regexes = RegexSet::new(patterns).ok();
        }
        idx
    }

    /// The best route of this group matching the request (ranked as the linear scan ranks; ties to the earlier).
    fn best(&self, routes: &[Route], host: &str, path: &str, method: &str) -> Option<usize> {
        let mut best: Option<(Rank, usize)> = None;
        let mut consider = |i: usize| {
            if let Some(rank) = routes[i].rank(host, path, method)
                && best
                    .as_ref()
                    .is_none_or(|(b, j)| rank > *b || (rank == *b && i < *j))
            {
                best = Some((rank, i));
            }
        };
        if let Some(v) = self.exact.get(path) {
            v.iter().copied().for_each(&mut consider);
        }
        if !self.prefix.is_empty() {
            // A prefix matches where the path has a segment boundary right after it (or ends); `/` matches every
            // path starting with `/`.
            if path.starts_with('/')
                && let Some(v) = self.prefix.get("/")
            {
                v.iter().copied().for_each(&mut consider);
            }
            for (at, b) in path.bytes().enumerate().chain([(path.len(), b'/')]) {
                if b == b'/'
                    && let Some(v) = self.prefix.get(&path[..at])
                {
                    v.iter().copied().for_each(&mut consider);
                }
            }
        }
        match &self.regexes {
            Some(set) if !self.regex_routes.is_empty() => {
                for m in set.matches(path).iter() {
                    consider(self.regex_routes[m]);
                }
            }
            _ => self.regex_routes.iter().copied().for_each(&mut consider),
        }
        best.map(|(_, i)| i)
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

    /// The linear scan `find` did before the index: every route ranked, ties to the earlier. The reference the
    /// index must agree with.
    fn linear_find<'a>(
        routes: &'a [Route],
        host: &str,
        path: &str,
        method: &str,
    ) -> Option<&'a Route> {
        let host = normalize_host(host);
        let mut best: Option<(Rank, &Route)> = None;
        for r in routes.iter() {
            if let Some(rank) = r.rank(&host, path, method)
                && best.as_ref().is_none_or(|(b, _)| rank > *b)
            {
                best = Some((rank, r));
            }
        }
        best.map(|(_, r)| r)
    }

    /// A small deterministic generator (xorshift64*), so a failure is reproducible from its seed.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
        }
    }

    const LABELS: &[&str] = &["a", "b", "api", "www", "example", "com", "x-1", "_s"];
    const SEGMENTS: &[&str] = &[
        "a", "b", "api", "v1", "v2", "admin", "x", "users", "", "a.b", "ü",
    ];
    const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE"];

    fn gen_host(g: &mut Gen) -> String {
        let n = 1 + g.below(3);
        (0..n).map(|_| g.pick(LABELS)).collect::<Vec<_>>().join(".")
    }

    fn gen_path(g: &mut Gen) -> String {
        let n = g.below(4);
        let mut p: String = (0..n).map(|_| format!("/{}", g.pick(SEGMENTS))).collect();
        if p.is_empty() || g.below(6) == 0 {
            p.push('/');
        }
        p
    }

    fn gen_route(g: &mut Gen, policy: usize) -> Route {
        let hosts = (0..[0, 0, 1, 1, 2][g.below(5)])
            .map(|_| match g.below(3) {
                0 => HostMatch::Suffix(format!(".{}", gen_host(g))),
                _ => HostMatch::Exact(gen_host(g)),
            })
            .collect();
        let path = match g.below(5) {
            0 => PathMatch::Exact(gen_path(g)),
            1 => {
                let base = gen_path(g);
                let re = match g.below(4) {
                    0 => format!("{}.*", regex::escape(&base)),
                    1 => format!("{}[0-9]+(/.*)?", regex::escape(&base)),
                    2 => "/(a|b)/.*".to_string(),
                    _ => format!("{}/?", regex::escape(base.trim_end_matches('/'))),
                };
                PathMatch::Regex(Regex::new(&format!("^(?:{re})$")).unwrap())
            }
            _ => PathMatch::prefix(&gen_path(g)),
        };
        let methods = (0..[0, 0, 1, 2][g.below(4)])
            .map(|_| Method::from_bytes(g.pick(METHODS).as_bytes()).unwrap())
            .collect();
        Route {
            hosts,
            path,
            methods,
            policy,
        }
    }

    /// The request side: hosts the routes name (or subdomains of them, with a port or another case), paths the
    /// routes name (or longer, or unrelated), any method.
    fn gen_request(g: &mut Gen, routes: &[Route]) -> (String, String, String) {
        let named: Vec<String> = routes
            .iter()
            .flat_map(|r| r.hosts.iter())
            .map(|h| match h {
                HostMatch::Exact(h) => h.clone(),
                HostMatch::Suffix(s) => format!("{}{s}", g.pick(LABELS)),
            })
            .collect();
        let mut host = if !named.is_empty() && g.below(3) > 0 {
            named[g.below(named.len())].clone()
        } else {
            gen_host(g)
        };
        if g.below(4) == 0 {
            host = format!("{}.{host}", g.pick(LABELS));
        }
        if g.below(5) == 0 {
            host = host.to_ascii_uppercase();
        }
        if g.below(5) == 0 {
            host.push_str(":8443");
        }
        let mut path = match (&routes[g.below(routes.len())].path, g.below(3)) {
            (PathMatch::Exact(p) | PathMatch::Prefix(p), 0 | 1) => p.clone(),
            _ => gen_path(g),
        };
        if g.below(3) == 0 {
            path.push_str(&gen_path(g));
        } else if g.below(8) == 0 {
            path.push_str(g.pick(SEGMENTS));
        }
        (host, path, g.pick(METHODS).to_string())
    }

    #[test]
    fn index_agrees_with_the_linear_scan() {
        let mut checked = 0;
        let mut matched = 0;
        for seed in 1..=200u64 {
            let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let routes: Vec<Route> = (0..1 + g.below(40)).map(|i| gen_route(&mut g, i)).collect();
            let table = RouteTable::new(routes.clone());
            for _ in 0..300 {
                let (host, path, method) = gen_request(&mut g, &routes);
                let want = linear_find(&routes, &host, &path, &method).map(|r| r.policy);
                let got = table.find(&host, &path, &method).map(|r| r.policy);
                assert_eq!(got, want, "seed {seed}: {method} {host}{path}");
                checked += 1;
                matched += want.is_some() as usize;
            }
        }
        // The generator must exercise both answers, or the comparison proves little.
        assert!(
            matched > checked / 4 && matched < checked,
            "{matched} of {checked} matched"
        );
    }

    #[test]
    fn index_agrees_on_hand_made_matchers() {
        // Values `parse`/`prefix` never produce, built directly: the index must still agree.
        let routes = vec![
            route(&[], PathMatch::Prefix("/api/".into()), &[], 0),
            route(&[], PathMatch::Prefix(String::new()), &[], 1),
            Route {
                hosts: vec![HostMatch::Suffix("ample.com".into())],
                ..route(&[], PathMatch::prefix("/"), &[], 2)
            },
            Route {
                hosts: vec![HostMatch::Suffix(String::new())],
                ..route(&[], PathMatch::Exact("/e".into()), &[], 3)
            },
            route(
                &["a.com", "*.a.com", "*.com"],
                PathMatch::prefix("/m"),
                &["GET"],
                4,
            ),
        ];
        let table = RouteTable::new(routes.clone());
        for host in [
            "example.com",
            "ample.com",
            "a.com",
            "b.a.com",
            "x.com",
            "h",
            "",
        ] {
            for path in ["", "/", "/e", "/api", "/api/", "/api//x", "/m/x", "//"] {
                for method in ["GET", "POST"] {
                    let want = linear_find(&routes, host, path, method).map(|r| r.policy);
                    let got = table.find(host, path, method).map(|r| r.policy);
                    assert_eq!(got, want, "{method} {host}{path}");
                }
            }
        }
    }

    #[test]
    fn regexes_past_the_set_size_limit_still_match() {
        // Many large regexes: whether or not one RegexSet holds them, each is still matched.
        let routes: Vec<Route> = (0..300)
            .map(|i| {
                let re = format!("^(?:/r{i}/[a-z]{{1,40}}/[0-9a-f]{{8,64}})$");
                route(&[], PathMatch::Regex(Regex::new(&re).unwrap()), &[], i)
            })
            .collect();
        let table = RouteTable::new(routes);
        assert_eq!(
            table
                .find("h", "/r299/abc/deadbeef", "GET")
                .map(|r| r.policy),
            Some(299)
        );
        assert_eq!(
            table.find("h", "/r7/abc/deadbeef", "GET").map(|r| r.policy),
            Some(7)
        );
        assert!(table.find("h", "/r7/abc/dead", "GET").is_none());
    }

    #[test]
    fn host_parsing() {
        assert!(HostMatch::parse("*.").is_none());
        assert!(HostMatch::parse("a b").is_none());
        assert!(HostMatch::parse("").is_none());
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    }
}
