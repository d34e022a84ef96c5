//! The admin API (`proto/oidc_authz/admin/v1/admin.proto`), a gRPC service served on the admin address next to
//! /healthz, /readyz and /metrics: list and revoke a user's sessions on every replica (through the session index
//! and the ended-session set), and explain what the loaded config would do with a described request (a dry run:
//! no identity provider is called, no token is echoed). The admin address is loopback by default and must never
//! be exposed: whoever reaches it can end sessions and learn who is logged in.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{Map, Value};
use tonic::{Response, Status};

use crate::authz::Authorizer;
use crate::config::AuthMethod;
use crate::credentials::{Authorization, Credentials, Intent};
use crate::login::authcode::is_browser;
use crate::policy::access::{Consumer, claim_value, claim_words};
use crate::policy::runtime::PolicyRuntime;
use crate::request::CheckView;
use crate::store::StoreError;
use crate::store::sessions::{SessionIndex, SessionRecord};

/// The generated messages and service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("oidc_authz.admin.v1");
}

use pb::admin_server::{Admin, AdminServer};
use pb::revoke_sessions_request::Target;

/// The admin service over an authorizer.
#[derive(Debug, Clone)]
pub struct AdminService {
    authorizer: Arc<Authorizer>,
}

impl AdminService {
    /// The service, ready to be routed.
    pub fn server(authorizer: Arc<Authorizer>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { authorizer })
    }

    fn index(&self) -> Result<&SessionIndex, Status> {
        self.authorizer
            .logins()
            .index()
            .ok_or_else(|| Status::failed_precondition("no session index"))
    }

    /// Ends one indexed session on every replica and forgets it.
    async fn revoke(&self, record: &SessionRecord) -> Result<(), Status> {
        let Some(key) = record.ended_key() else {
            return Err(Status::internal("an index record has no ended-session key"));
        };
        self.authorizer
            .logins()
            .end(key, record.until)
            .await
            .map_err(unavailable)?;
        self.index()?.remove(record).await.map_err(unavailable)?;
        tracing::info!(session.id = %record.id, policy.name = %record.policy, "admin: session revoked");
        Ok(())
    }
}

fn unavailable(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn revoke_sessions(
        &self,
        request: tonic::Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let index = self.index()?;
        let records = match request.into_inner().target {
            Some(Target::Sub(sub)) if !sub.is_empty() => {
                index.of_sub(&sub).await.map_err(unavailable)?
            }
            Some(Target::Id(id)) if !id.is_empty() => index
                .get(&id)
                .await
                .map_err(unavailable)?
                .into_iter()
                .collect(),
            _ => return Err(Status::invalid_argument("name a sub or a session id")),
        };
        for record in &records {
            self.revoke(record).await?;
        }
        Ok(Response::new(pb::RevokeSessionsResponse {
            revoked: u32::try_from(records.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn list_sessions(
        &self,
        request: tonic::Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let sub = request.into_inner().sub;
        if sub.is_empty() {
            return Err(Status::invalid_argument("name a sub"));
        }
        let records = self.index()?.of_sub(&sub).await.map_err(unavailable)?;
        let sessions = records
            .into_iter()
            .map(|r| pb::Session {
                id: r.id,
                policy: r.policy,
                sub: r.sub,
                created: r.created,
                last_seen: r.seen,
                expires: r.until,
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn explain(
        &self,
        request: tonic::Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        Ok(Response::new(explain(
            &self.authorizer,
            request.into_inner(),
        )))
    }
}

/// The Check an [`pb::ExplainRequest`] describes.
fn described(r: &pb::ExplainRequest) -> CheckRequest {
    let headers: HashMap<String, String> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let mut context_extensions = HashMap::new();
    if !r.context_policy.is_empty() {
        context_extensions.insert("policy".to_string(), r.context_policy.clone());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: r.method.clone(),
                    host: r.host.clone(),
                    path: r.path.clone(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

/// A dry run of a described request: selection, methods, rules. Never calls the IdP, never echoes a token.
pub fn explain(authorizer: &Authorizer, r: pb::ExplainRequest) -> pb::ExplainResponse {
    let check = described(&r);
    let view = CheckView::new(&check);
    let mut out = pb::ExplainResponse::default();
    let rt = match authorizer.select(&view) {
        Ok(rt) => rt,
        Err(refusal) => {
            out.selection = refusal.description;
            return out;
        }
    };
    out.policy = rt.policy.name.clone();
    out.selection = if r.context_policy.is_empty() {
        "the best [[routes]] match".into()
    } else {
        "context_extensions.policy".into()
    };
    out.accepted_methods = rt
        .policy
        .auth_methods
        .iter()
        .map(|m| m.as_str().to_string())
        .collect();
    let creds = Credentials::parse(&view, rt);
    let (method, reason) = would_use(rt, &view, &creds);
    out.method = method.map(|m| m.as_str().to_string()).unwrap_or_default();
    out.method_reason = reason.to_string();

    let claims: Option<Map<String, Value>> = if r.claims_json.trim().is_empty() {
        None
    } else {
        match serde_json::from_str::<Value>(&r.claims_json) {
            Ok(Value::Object(m)) => Some(m),
            Ok(_) => {
                out.claims_error = "the claims are not a JSON object".into();
                None
            }
            Err(e) => {
                out.claims_error = format!("the claims are not JSON: {e}");
                None
            }
        }
    };
    out.rules = rt
        .policy
        .access
        .requirements()
        .iter()
        .map(|req| {
            let have: Vec<&str> = claims
                .as_ref()
                .and_then(|c| claim_value(c, &req.claim))
                .map(claim_words)
                .unwrap_or_default();
            let alternatives: Vec<pb::Alternative> = req
                .alternatives
                .iter()
                .map(|alt| pb::Alternative {
                    words: alt.clone(),
                    matched: claims.is_some() && alt.iter().all(|w| have.contains(&w.as_str())),
                })
                .collect();
            pb::RuleResult {
                what: req.what.clone(),
                claim: req.claim.join("."),
                satisfied: alternatives.iter().any(|a| a.matched),
                alternatives,
            }
        })
        .collect();
    out.rules.extend(claim_rule_results(rt, claims.as_ref()));
    out.access_allowed = match &claims {
        Some(c) => match rt.policy.access.check(c) {
            Ok(()) => true,
            Err(denied) => {
                out.access_reason = denied.to_string();
                false
            }
        },
        None => rt.policy.access.is_empty(),
    };
    if let Some(Consumer::Named(c)) = claims.as_ref().map(|c| rt.policy.access.consumer(c)) {
        out.consumer = c;
    }
    out
}

/// The `claims_forbidden` and `consumer_claim` rules as rule results (no alternatives): a forbidden claim is
/// satisfied when absent, the consumer rule when the claims name a usable consumer (or none, when optional).
fn claim_rule_results(
    rt: &PolicyRuntime,
    claims: Option<&Map<String, Value>>,
) -> Vec<pb::RuleResult> {
    let access = &rt.policy.access;
    let mut out: Vec<pb::RuleResult> = access
        .forbidden()
        .iter()
        .map(|path| pb::RuleResult {
            what: "claims_forbidden".into(),
            claim: path.join("."),
            satisfied: claims.is_some_and(|c| claim_value(c, path).is_none()),
            alternatives: Vec::new(),
        })
        .collect();
    if let Some(rule) = access.consumer_rule() {
        let satisfied = claims.is_some_and(|c| match rule.consumer(c) {
            Consumer::Named(_) => true,
            Consumer::Absent => rule.optional,
            Consumer::Unusable => false,
        });
        out.push(pb::RuleResult {
            what: "consumer_claim".into(),
            claim: rule.claim.join("."),
            satisfied,
            alternatives: Vec::new(),
        });
    }
    out
}

/// The method a Check would authenticate the request with (as [`crate::authz::Authorizer::check`] decides it,
/// without running it), and why.
fn would_use(
    rt: &PolicyRuntime,
    view: &CheckView<'_>,
    creds: &Credentials<'_>,
) -> (Option<AuthMethod>, &'static str) {
    let policy = &rt.policy;
    if let Some(flow) = &rt.login {
        match creds.intent {
            Intent::Callback => {
                return (
                    Some(AuthMethod::AuthorizationCode),
                    "the login's callback path",
                );
            }
            Intent::Logout => return (Some(AuthMethod::Session), "the logout path"),
            Intent::BackchannelLogout => {
                return (
                    Some(AuthMethod::Session),
                    "the back-channel logout path (a logout token from the provider)",
                );
            }
            Intent::Resource if !creds.has_token() => {
                if flow.store.find(&creds.cookies).is_some() {
                    return (
                        Some(AuthMethod::Session),
                        "the request carries a session cookie",
                    );
                }
                if policy.allows(AuthMethod::AuthorizationCode) && is_browser(view) {
                    return (
                        Some(AuthMethod::AuthorizationCode),
                        "no session: a browser is redirected to log in",
                    );
                }
                return (None, "no session and not a browser navigation: 401");
            }
            Intent::Resource => {}
        }
    }
    let cc = policy.allows(AuthMethod::ClientCredentials);
    let header_client = creds.header_client.is_some() && cc;
    match &creds.authorization {
        Authorization::Bearer(token) if crate::flow::takes_tokens(policy) => {
            match crate::flow::token_chain(policy, token).first() {
                Some(AuthMethod::Introspection) => (
                    Some(AuthMethod::Introspection),
                    "a bearer token, introspected",
                ),
                Some(AuthMethod::Userinfo) => (
                    Some(AuthMethod::Userinfo),
                    "a bearer token, checked at the userinfo endpoint",
                ),
                _ => (Some(AuthMethod::Bearer), "a bearer JWT, verified locally"),
            }
        }
        Authorization::Basic(_) if cc => (
            Some(AuthMethod::ClientCredentials),
            "client credentials in Authorization: Basic",
        ),
        Authorization::None if header_client => (
            Some(AuthMethod::ClientCredentials),
            "client credentials in the policy's headers",
        ),
        Authorization::Malformed(why) => (None, *why),
        Authorization::None => (None, "no credentials in the request: 401"),
        Authorization::Bearer(_) | Authorization::Basic(_) => {
            (None, "this route does not accept these credentials: 401")
        }
    }
}
