//! Reads a decK file: services, their routes, and which `openid-connect` plugin applies to each route.

use serde_json::{Map, Value};

use super::{ImportError, NON_RESTRICTING_PLUGINS, Note, RESTRICTING_PLUGINS, Severity};

/// The plugin the importer maps.
pub(super) const OIDC: &str = "openid-connect";

/// Parses YAML or JSON text into a JSON value.
pub(super) fn parse(text: &str) -> Result<Value, ImportError> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| ImportError::Parse(e.to_string()));
    }
    serde_yaml::from_str(text).map_err(|e| ImportError::Parse(e.to_string()))
}

/// A Kong service: where its routes go.
#[derive(Debug)]
pub(super) struct Service {
    /// Its name (or `service_N`).
    pub(super) name: String,
    /// `http` or `https`.
    pub(super) protocol: String,
    /// Upstream host.
    pub(super) host: String,
    /// Upstream port.
    pub(super) port: u16,
    /// Path prepended to every upstream request (`/` when none).
    pub(super) path: String,
}

/// A Kong route.
#[derive(Debug)]
pub(super) struct Route {
    /// Its name (or `route_N`).
    pub(super) name: String,
    /// Index into [`Deck::services`], if it has one.
    pub(super) service: Option<usize>,
    /// Kong paths: plain prefixes, or regexes after `~`.
    pub(super) paths: Vec<String>,
    /// Kong hosts (may start with `*.`).
    pub(super) hosts: Vec<String>,
    /// Methods, upper case.
    pub(super) methods: Vec<String>,
    /// Kong's `strip_path` (default true).
    pub(super) strip_path: bool,
    /// Kong's `regex_priority`.
    pub(super) regex_priority: i64,
    /// Index into [`Deck::plugins`] of the `openid-connect` plugin that applies (route > service > global).
    pub(super) plugin: Option<usize>,
}

/// One `openid-connect` plugin.
#[derive(Debug)]
pub(super) struct Plugin {
    /// `instance_name`, else the name of what it is on (route, service), else `global`.
    pub(super) name: String,
    /// Where it is, for the report: `route api`, `service web`, `global`.
    pub(super) at: String,
    /// Its `config`.
    pub(super) config: Map<String, Value>,
}

/// The parts of a decK file the importer reads.
#[derive(Debug, Default)]
pub(super) struct Deck {
    /// Services, in file order.
    pub(super) services: Vec<Service>,
    /// Routes, in file order.
    pub(super) routes: Vec<Route>,
    /// `openid-connect` plugins (enabled ones only).
    pub(super) plugins: Vec<Plugin>,
}

/// Where a plugin is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Global,
    Service(String),
    Route(String),
}

fn name_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("name")
            .or_else(|| o.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn list<'a>(o: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    o.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn note(notes: &mut Vec<Note>, severity: Severity, at: &str, param: &str, message: String) {
    notes.push(Note {
        severity,
        at: at.to_string(),
        param: param.to_string(),
        message,
    });
}

/// Route attributes that narrow which requests a Kong route takes; Envoy's routes here do not have them, so the
/// route would take requests Kong sends elsewhere.
const ROUTE_MATCHERS_UNSUPPORTED: &[&str] = &["headers", "snis", "sources", "destinations"];

impl Deck {
    /// Reads the decK document; notes what it leaves out.
    pub(super) fn read(doc: &Value, notes: &mut Vec<Note>) -> Result<Deck, ImportError> {
        let root = doc
            .as_object()
            .ok_or_else(|| ImportError::Shape("the top level is not a mapping".into()))?;
        if !root.contains_key("_format_version") {
            note(
                notes,
                Severity::Info,
                "file",
                "_format_version",
                "missing; read as decK 3.0".into(),
            );
        }
        for key in [
            "consumers",
            "consumer_groups",
            "upstreams",
            "certificates",
            "vaults",
        ] {
            if root.get(key).is_some_and(super::is_set) {
                note(
                    notes,
                    Severity::Unmapped,
                    "file",
                    key,
                    "not imported (no equivalent in oidc-authz; Envoy clusters are written from services)"
                        .into(),
                );
            }
        }
        let mut deck = Deck::default();
        let mut found: Vec<(Scope, &Map<String, Value>)> = Vec::new();
        for s in list(root, "services") {
            let s = s
                .as_object()
                .ok_or_else(|| ImportError::Shape("a service is not a mapping".into()))?;
            let idx = deck.services.len();
            let service = read_service(s, idx)?;
            let sname = service.name.clone();
            deck.services.push(service);
            for p in list(s, "plugins") {
                if let Some(p) = p.as_object() {
                    found.push((Scope::Service(sname.clone()), p));
                }
            }
            for r in list(s, "routes") {
                let r = r
                    .as_object()
                    .ok_or_else(|| ImportError::Shape("a route is not a mapping".into()))?;
                let rname = deck.read_route(r, Some(idx), notes)?;
                for p in list(r, "plugins") {
                    if let Some(p) = p.as_object() {
                        found.push((Scope::Route(rname.clone()), p));
                    }
                }
            }
        }
        for r in list(root, "routes") {
            let r = r
                .as_object()
                .ok_or_else(|| ImportError::Shape("a route is not a mapping".into()))?;
            let service = match r.get("service").and_then(name_of) {
                Some(n) => Some(deck.services.iter().position(|s| s.name == n).ok_or_else(
                    || ImportError::Shape(format!("a route names unknown service `{n}`")),
                )?),
                None => None,
            };
            let rname = deck.read_route(r, service, notes)?;
            for p in list(r, "plugins") {
                if let Some(p) = p.as_object() {
                    found.push((Scope::Route(rname.clone()), p));
                }
            }
        }
        for p in list(root, "plugins") {
            let Some(p) = p.as_object() else { continue };
            let scope = if let Some(r) = p.get("route").and_then(name_of) {
                Scope::Route(r)
            } else if let Some(s) = p.get("service").and_then(name_of) {
                Scope::Service(s)
            } else {
                Scope::Global
            };
            found.push((scope, p));
        }
        deck.attach(found, notes)?;
        Ok(deck)
    }

    fn read_route(
        &mut self,
        r: &Map<String, Value>,
        service: Option<usize>,
        notes: &mut Vec<Note>,
    ) -> Result<String, ImportError> {
        let name = r
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("route_{}", self.routes.len() + 1));
        let at = format!("route {name}");
        for key in ROUTE_MATCHERS_UNSUPPORTED {
            if r.get(*key).is_some_and(super::is_set) {
                note(
                    notes,
                    Severity::Error,
                    &at,
                    key,
                    "route matching on this is not imported: the route would take requests Kong sends to another route"
                        .into(),
                );
            }
        }
        if r.get("expression").is_some_and(super::is_set) {
            note(
                notes,
                Severity::Error,
                &at,
                "expression",
                "expressions-router routes are not imported".into(),
            );
        }
        let methods: Vec<String> = strings(r.get("methods"))
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        // They become an Envoy `:method` regex and `[[routes]] methods`: HTTP method tokens only.
        if let Some(m) = methods
            .iter()
            .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(ImportError::Shape(format!(
                "route {name}: method {m:?} is not an HTTP method (letters only)"
            )));
        }
        self.routes.push(Route {
            name: name.clone(),
            service,
            paths: strings(r.get("paths")),
            hosts: strings(r.get("hosts")),
            methods,
            strip_path: r.get("strip_path").and_then(Value::as_bool).unwrap_or(true),
            regex_priority: r.get("regex_priority").and_then(Value::as_i64).unwrap_or(0),
            plugin: None,
        });
        Ok(name)
    }

    /// Keeps the enabled `openid-connect` plugins and gives each route the one that applies: the route's, else its
    /// service's, else the global one (Kong's precedence). Other plugins are noted (restricting ones as errors).
    fn attach(
        &mut self,
        found: Vec<(Scope, &Map<String, Value>)>,
        notes: &mut Vec<Note>,
    ) -> Result<(), ImportError> {
        let mut by_scope: Vec<(Scope, usize)> = Vec::new();
        for (scope, p) in found {
            let kind = p.get("name").and_then(Value::as_str).unwrap_or("");
            let at = match &scope {
                Scope::Global => "global".to_string(),
                Scope::Service(s) => format!("service {s}"),
                Scope::Route(r) => format!("route {r}"),
            };
            let at = format!("plugin {kind} on {at}");
            if p.get("enabled") == Some(&Value::Bool(false)) {
                note(
                    notes,
                    Severity::Info,
                    &at,
                    "enabled",
                    "disabled: not imported".into(),
                );
                continue;
            }
            if p.get("consumer").is_some_and(super::is_set)
                || p.get("consumer_group").is_some_and(super::is_set)
            {
                note(
                    notes,
                    Severity::Unmapped,
                    &at,
                    "consumer",
                    "consumer-scoped plugins are not imported".into(),
                );
                continue;
            }
            if kind != OIDC {
                let (severity, message) = if RESTRICTING_PLUGINS.contains(&kind) {
                    (
                        Severity::Error,
                        "restricts access and is not imported: requests it refuses would pass",
                    )
                } else if NON_RESTRICTING_PLUGINS.contains(&kind) {
                    (Severity::Unmapped, "not imported (only openid-connect is)")
                } else {
                    // Fail closed: a plugin the importer does not know may restrict access.
                    (
                        Severity::Error,
                        "unknown to the importer, so taken as restricting access; not imported: requests it refuses would pass",
                    )
                };
                note(notes, severity, &at, "", message.into());
                continue;
            }
            if by_scope.iter().any(|(s, _)| *s == scope) {
                return Err(ImportError::Shape(format!(
                    "two openid-connect plugins on one {}",
                    at.trim_start_matches("plugin openid-connect on ")
                )));
            }
            let owner = match &scope {
                Scope::Global => "global".to_string(),
                Scope::Service(s) | Scope::Route(s) => s.clone(),
            };
            let name = p
                .get("instance_name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or(owner);
            let config = match p.get("config") {
                Some(Value::Object(c)) => c.clone(),
                None | Some(Value::Null) => Map::new(),
                Some(_) => {
                    return Err(ImportError::Shape(format!("{at}: config is not a mapping")));
                }
            };
            by_scope.push((scope, self.plugins.len()));
            self.plugins.push(Plugin { name, at, config });
        }
        let find = |s: &Scope| by_scope.iter().find(|(x, _)| x == s).map(|(_, i)| *i);
        for scope in by_scope.iter().map(|(s, _)| s) {
            let known = match scope {
                Scope::Global => true,
                Scope::Route(r) => self.routes.iter().any(|x| &x.name == r),
                Scope::Service(s) => self.services.iter().any(|x| &x.name == s),
            };
            if !known {
                return Err(ImportError::Shape(format!(
                    "an openid-connect plugin names an unknown {scope:?}"
                )));
            }
        }
        for i in 0..self.routes.len() {
            let r = &self.routes[i];
            let plugin = find(&Scope::Route(r.name.clone()))
                .or_else(|| {
                    r.service
                        .and_then(|s| find(&Scope::Service(self.services[s].name.clone())))
                })
                .or_else(|| find(&Scope::Global));
            self.routes[i].plugin = plugin;
        }
        Ok(())
    }
}

fn read_service(s: &Map<String, Value>, idx: usize) -> Result<Service, ImportError> {
    let name = s
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("service_{}", idx + 1));
    let (mut protocol, mut host, mut port, mut path) = ("http".to_string(), None, None, None);
    if let Some(u) = s.get("url").and_then(Value::as_str) {
        let url = url::Url::parse(u)
            .map_err(|e| ImportError::Shape(format!("service {name}: bad url: {e}")))?;
        protocol = url.scheme().to_string();
        host = url.host_str().map(str::to_string);
        port = url.port_or_known_default();
        path = Some(url.path().to_string());
    }
    if let Some(p) = s.get("protocol").and_then(Value::as_str) {
        protocol = p.to_string();
    }
    if let Some(h) = s.get("host").and_then(Value::as_str) {
        host = Some(h.to_string());
    }
    if let Some(p) = s.get("port").and_then(Value::as_u64) {
        port = u16::try_from(p).ok();
    }
    if let Some(p) = s.get("path").and_then(Value::as_str) {
        path = Some(p.to_string());
    }
    let host = host.ok_or_else(|| ImportError::Shape(format!("service {name}: no url or host")))?;
    let port = port.unwrap_or(if protocol == "https" { 443 } else { 80 });
    Ok(Service {
        name,
        protocol,
        host,
        port,
        path: path.unwrap_or_else(|| "/".into()),
    })
}
