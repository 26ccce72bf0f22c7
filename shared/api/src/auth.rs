//! Who is asking, and what they may do: the REST middleware, and the same rules for a write
//! that a zone's follower forwards to its leader (it carries the caller's authority, which
//! the leader checks again) and for a sidecar's xDS stream.
//!
//! ```text
//!   request ──> a bearer token? ── invalid, expired, revoked ──> 401 (even from localhost)
//!                 │ none            └─ valid ──> changes need an admin user token (else 403);
//!                 │                              a dataplane token may write its own Dataplane,
//!                 │                              with the tags it is allowed
//!                 └─> this host, trusted (--trust-localhost)? ── yes ──> an admin, as in Kuma
//!                                                               no ──> reads only (else 401)
//! ```
//!
//! Handlers read the caller with [`caller`]; outside a request (the control plane's own
//! work) the caller is the node itself.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_model::policies::zone_ingress::INGRESS_NODE_MESH;
use meridian_model::{Kind, Resource, ResourceKey, Spec};
use serde::{Deserialize, Serialize};

use crate::ApiError;
use crate::tokens::{Claims, Subject, TokenKind, Tokens};

/// The group whose members may change resources and read secrets.
pub const ADMIN_GROUP: &str = "mesh-system:admin";

/// The token kinds the REST API takes: users, and proxies registering themselves.
const REST_KINDS: [TokenKind; 3] = [TokenKind::User, TokenKind::Dataplane, TokenKind::ZoneIngress];

/// Whom a request, or a write it led to, acts for. A follower forwards it with the write, and
/// the leader decides again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Authority {
    /// No token, from a host that is not trusted.
    Anonymous,
    /// The control plane's own host, trusted without a token (`--trust-localhost`).
    TrustedHost,
    /// A bearer token, verified wherever it is acted on.
    Token(String),
    /// The control plane itself: its keys, CAs, the sync from global, status.
    Node,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::TrustedHost => f.write_str("TrustedHost"),
            Self::Token(_) => f.write_str("Token(<secret>)"),
            Self::Node => f.write_str("Node"),
        }
    }
}

/// A request's caller: its authority, and a token's verified claims.
#[derive(Clone, Debug)]
pub struct Caller {
    pub authority: Authority,
    pub claims: Option<Claims>,
}

impl Caller {
    fn node() -> Self {
        Self {
            authority: Authority::Node,
            claims: None,
        }
    }

    /// Whether the caller may change anything and read secrets: an admin user's token, the
    /// trusted host (as Kuma's `localhostIsAdmin`), or the control plane itself.
    pub fn is_admin(&self) -> bool {
        match self.authority {
            Authority::TrustedHost | Authority::Node => true,
            Authority::Anonymous => false,
            Authority::Token(_) => self.claims.as_ref().is_some_and(is_admin),
        }
    }
}

fn is_admin(claims: &Claims) -> bool {
    matches!(&claims.subject, Subject::User { groups, .. } if groups.iter().any(|g| g == ADMIN_GROUP))
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Who the current request is from; the node itself outside any request.
pub fn caller() -> Caller {
    CALLER.try_with(Clone::clone).unwrap_or_else(|_| Caller::node())
}

/// Runs `f` as `caller` (what the middleware does for each request).
pub async fn acting_as<F: std::future::Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// How the control plane decides who may do what.
#[derive(Clone, Debug)]
pub struct Auth {
    pub tokens: Tokens,
    /// Let requests without a token from the host itself act as an admin (Kuma's default).
    pub trust_localhost: bool,
}

/// Why something was refused: 401 when the caller is unknown, 403 when known and not allowed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(String),
    Forbidden(String),
    /// The keys could not be read (the store is away): nobody is refused for good.
    Unavailable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthenticated(why) | Self::Forbidden(why) | Self::Unavailable(why) => f.write_str(why),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(why) => ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", why),
            Refusal::Forbidden(why) => ApiError::new(StatusCode::FORBIDDEN, "Forbidden", why),
            Refusal::Unavailable(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", why),
        }
    }
}

/// The resource a REST path writes, for the paths a proxy's token may write: its own
/// Dataplane or ZoneIngress.
fn proxy_path(path: &str) -> Option<ResourceKey> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["meshes", mesh, "dataplanes", name] => Some(ResourceKey::new(Kind::Dataplane, *mesh, *name)),
        ["zoneingresses", name] => Some(ResourceKey::new(Kind::ZoneIngress, "", *name)),
        _ => None,
    }
}

/// Whether a proxy token's subject is the resource `key`.
fn owns(subject: &Subject, key: &ResourceKey) -> bool {
    match subject {
        Subject::Dataplane { mesh, name, .. } => {
            key.kind == Kind::Dataplane && key.mesh == *mesh && key.name == *name
        }
        Subject::ZoneIngress { name } => key.kind == Kind::ZoneIngress && key.name == *name,
        _ => false,
    }
}

/// What a write does, for deciding who may do it.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// Creates or replaces this resource.
    Put(&'a Resource),
    Delete(&'a ResourceKey),
    /// Anything else: membership, synced batches, secrets, status. Admins and the node only.
    Other,
}

/// Whether `caller` may make `change`. The REST middleware has already refused what the path
/// alone rules out; this also looks at what is written (a Dataplane's tags).
pub fn may_change(caller: &Caller, change: Change<'_>) -> Result<(), Refusal> {
    if caller.is_admin() {
        return Ok(());
    }
    let Some(claims) = &caller.claims else {
        return Err(Refusal::Unauthenticated(
            "changes need a token: send `Authorization: Bearer TOKEN` (meshctl --token or MESHCTL_TOKEN); the admin token is the file admin-token in the control plane's data dir".into(),
        ));
    };
    let key = match change {
        Change::Put(resource) => resource.key(),
        Change::Delete(key) => key.clone(),
        Change::Other => return Err(forbidden(claims)),
    };
    if !owns(&claims.subject, &key) {
        return Err(forbidden(claims));
    }
    if let (Subject::Dataplane { tags, .. }, Change::Put(resource)) = (&claims.subject, change)
        && let Spec::Dataplane(dp) = &resource.spec
    {
        dp.claims_only(tags)
            .map_err(|why| Refusal::Forbidden(format!("this dataplane token does not allow it: {why}")))?;
    }
    Ok(())
}

fn forbidden(claims: &Claims) -> Refusal {
    Refusal::Forbidden(match &claims.subject {
        Subject::User { name, .. } => format!(
            "user {name:?} may not change resources: that takes a user token in the {ADMIN_GROUP} group"
        ),
        Subject::Dataplane { mesh, name, .. } => {
            format!("a dataplane token may change only its own Dataplane, {name:?} in mesh {mesh:?}")
        }
        Subject::ZoneIngress { name } => {
            format!("a zone ingress token may change only its own ZoneIngress, {name:?}")
        }
        Subject::Zone { .. } => "a zone token is for the sync only".to_owned(),
    })
}

/// A token that did not verify: the caller is unknown, unless the keys could not be read
/// (then nobody is refused for good).
fn refusal(e: crate::tokens::TokenError) -> Refusal {
    match e {
        crate::tokens::TokenError::Store(e) => {
            tracing::warn!(error = %e, "reading the signing keys failed");
            Refusal::Unavailable("the token cannot be checked now: retry later".into())
        }
        e => Refusal::Unauthenticated(format!("invalid token: {e}")),
    }
}

impl Auth {
    /// The caller `authority` stands for, its token verified now.
    pub async fn resolve(&self, authority: &Authority) -> Result<Caller, Refusal> {
        let claims = match authority {
            Authority::Token(token) => Some(self.tokens.verify(token, &REST_KINDS).await.map_err(refusal)?),
            Authority::TrustedHost if !self.trust_localhost => {
                return Err(Refusal::Unauthenticated(
                    "this control plane does not trust its host without a token".into(),
                ));
            }
            _ => None,
        };
        Ok(Caller {
            authority: authority.clone(),
            claims,
        })
    }

    /// Checks a proxy's xDS stream: its token must be for the proxy it claims to be, `dataplane`
    /// (if registered) must carry only the tags the token allows; no token is accepted only
    /// from this host, when it is trusted.
    pub async fn check_proxy(
        &self,
        token: Option<&str>,
        key: &ResourceKey,
        peer_is_local: bool,
        dataplane: Option<&Resource>,
    ) -> Result<(), Refusal> {
        let Some(token) = token else {
            return if peer_is_local && self.trust_localhost {
                Ok(())
            } else {
                Err(Refusal::Unauthenticated(
                    "no dataplane token: start meridian-dp with --dataplane-token-file (meshctl generate dataplane-token)".into(),
                ))
            };
        };
        let kind = if key.kind == Kind::ZoneIngress {
            TokenKind::ZoneIngress
        } else {
            TokenKind::Dataplane
        };
        let claims = self.tokens.verify(token, &[kind]).await.map_err(refusal)?;
        if !owns(&claims.subject, key) {
            return Err(Refusal::Forbidden(match &claims.subject {
                Subject::Dataplane { mesh, name, .. } => format!(
                    "the token is for Dataplane {name:?} in mesh {mesh:?}, not {:?} in {:?}",
                    key.name, key.mesh
                ),
                Subject::ZoneIngress { name } => format!(
                    "the token is for zone ingress {name:?}, not {:?} (meshctl generate zone-ingress-token --name {})",
                    key.name, key.name
                ),
                _ => "not a proxy token".into(),
            }));
        }
        if let (Subject::Dataplane { tags, .. }, Some(resource)) = (&claims.subject, dataplane)
            && let Spec::Dataplane(dp) = &resource.spec
        {
            dp.claims_only(tags).map_err(Refusal::Forbidden)?;
        }
        Ok(())
    }

    /// The key of an xDS node: a Dataplane's, or (in the ingress pseudo-mesh) a ZoneIngress's.
    pub fn proxy_key(mesh: &str, name: &str) -> ResourceKey {
        if mesh == INGRESS_NODE_MESH {
            ResourceKey::new(Kind::ZoneIngress, "", name)
        } else {
            ResourceKey::new(Kind::Dataplane, mesh, name)
        }
    }
}

/// Whether a request without a token is from this host itself, as Kuma judges it: from a
/// loopback address, through no proxy, naming a loopback host, and not sent by a browser on
/// behalf of another site (which could otherwise reach a loopback API).
fn from_this_host(request: &Request) -> bool {
    let loopback = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    let headers = request.headers();
    let proxied = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_none_or(is_loopback_host);
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|h| h.to_str().ok())
        .is_none_or(|s| matches!(s, "" | "same-origin" | "none"));
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|h| h.to_str().ok())
        .is_none_or(|o| {
            o.split_once("://")
                .is_some_and(|(_, host)| is_loopback_host(host))
        });
    loopback && !proxied && host_ok && site_ok && origin_ok
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Some(t.trim().to_owned()))
        .ok_or_else(|| Refusal::Unauthenticated("the Authorization header must be `Bearer TOKEN`".into()))
}

/// Whether a request changes something (token issuing and key management included).
fn is_change(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || path.starts_with("/tokens")
}

fn refuse(refusal: Refusal) -> Response {
    let unauthenticated = matches!(refusal, Refusal::Unauthenticated(_));
    let mut response = ApiError::from(refusal).into_response();
    if unauthenticated {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The middleware: see the module's picture.
pub async fn authorize(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let authority = match bearer(request.headers()) {
        Err(refusal) => return refuse(refusal),
        Ok(Some(token)) => Authority::Token(token),
        Ok(None) if auth.trust_localhost && from_this_host(&request) => Authority::TrustedHost,
        Ok(None) => Authority::Anonymous,
    };
    let caller = match auth.resolve(&authority).await {
        Ok(caller) => caller,
        Err(refusal) => return refuse(refusal),
    };
    let path = request.uri().path();
    if is_change(request.method(), path) && !caller.is_admin() {
        let own = proxy_path(path).filter(|key| {
            request.method() != Method::POST && caller.claims.as_ref().is_some_and(|c| owns(&c.subject, key))
        });
        if own.is_none() {
            let refusal = may_change(&caller, Change::Other).expect_err("not an admin");
            return refuse(refusal);
        }
    }
    acting_as(caller, next.run(request)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:5681",
            "127.0.0.1",
            "127.0.0.1:5681",
            "[::1]:5681",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "cp.example.com",
            "10.0.0.1:5681",
            "localhost.evil.com",
            "[2001:db8::1]:80",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn proxy_paths_name_their_resource() {
        assert_eq!(
            proxy_path("/meshes/default/dataplanes/web-1"),
            Some(ResourceKey::new(Kind::Dataplane, "default", "web-1"))
        );
        assert_eq!(
            proxy_path("/zoneingresses/ingress-1"),
            Some(ResourceKey::new(Kind::ZoneIngress, "", "ingress-1"))
        );
        assert_eq!(proxy_path("/meshes/default/meshtraces/t"), None);
        assert_eq!(proxy_path("/meshes/default/dataplanes/web-1/_config"), None);
    }

    #[test]
    fn authority_never_shows_its_token() {
        assert_eq!(
            format!("{:?}", Authority::Token("eyJsecret".into())),
            "Token(<secret>)"
        );
    }
}
