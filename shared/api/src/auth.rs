//! Signed tokens, and who may change what through the REST API.
//!
//! A token is `v1.<payload>.<signature>`, both parts base64url: the payload is JSON claims
//! (`kind`, `iat`, `exp`, and per kind: `zone`; `name` and `groups`), the signature
//! HMAC-SHA256 over `v1.<payload>` with a key kept in the store, so every replica (and every
//! node of a zone's Raft) verifies every token. Keys never leave the store and are never
//! logged.
//!
//! ```text
//!   request ──> authorize: a bearer token? ── invalid ──> 401 (even from localhost)
//!                 │ none                      └─ valid ──> writes need mesh-system:admin (else 403)
//!                 └─> reads pass; writes pass only from loopback with --trust-localhost (else 401)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use meridian_store::{Store, StoreError};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::ApiError;
use meridian_model::policies::zone_ingress::INGRESS_NODE_MESH;

const PREFIX: &str = "v1";
/// The group whose members may change resources.
pub const ADMIN_GROUP: &str = "mesh-system:admin";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Signs and checks tokens with one store-held key.
#[derive(Clone)]
pub struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { key: <secret> }")
    }
}

impl Signer {
    /// The signer whose key is stored as `key_name`, creating the key on first use.
    pub async fn load(store: &dyn Store, key_name: &str) -> Result<Self, StoreError> {
        let mut candidate = [0u8; 32];
        SystemRandom::new()
            .fill(&mut candidate)
            .map_err(|_| StoreError::Internal("no randomness for a signing key".into()))?;
        let secret = store.secret(key_name, &B64.encode(candidate)).await?;
        let bytes = B64
            .decode(secret.as_bytes())
            .map_err(|_| StoreError::Internal(format!("the stored {key_name} key is not base64url")))?;
        Ok(Self::with_key(&bytes))
    }

    pub fn with_key(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A token carrying `claims` (an object), good for `valid_for`.
    pub fn issue(&self, mut claims: Value, valid_for: Duration) -> String {
        let iat = now_secs();
        claims["iat"] = iat.into();
        claims["exp"] = iat.saturating_add(valid_for.as_secs()).into();
        let signed = format!("{PREFIX}.{}", B64.encode(claims.to_string()));
        let signature = B64.encode(hmac::sign(&self.key, signed.as_bytes()).as_ref());
        format!("{signed}.{signature}")
    }

    /// The claims of `token` if this signer issued it and it has not expired.
    pub fn verify(&self, token: &str) -> Result<Value, String> {
        let mut parts = token.trim().split('.');
        let (Some(PREFIX), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a Meridian token".into());
        };
        let signature = B64
            .decode(signature)
            .map_err(|_| "malformed signature".to_owned())?;
        hmac::verify(&self.key, format!("{PREFIX}.{payload}").as_bytes(), &signature).map_err(|_| {
            "the signature does not match: the token was not issued by this control plane".to_owned()
        })?;
        let claims: Value = B64
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .filter(Value::is_object)
            .ok_or("malformed payload")?;
        if let Some(exp) = claims["exp"].as_u64()
            && exp <= now_secs()
        {
            return Err(format!(
                "the token expired at {}",
                meridian_model::rfc3339(exp.saturating_mul(1000) as i64)
            ));
        }
        Ok(claims)
    }
}

/// How the REST API decides who may write.
#[derive(Clone, Debug)]
pub struct Auth {
    /// Signs user tokens; set once the key is loaded (on a zone, once its Raft has a leader).
    pub users: Arc<std::sync::OnceLock<Signer>>,
    /// Let requests without a token from the host itself write (Kuma's default).
    pub trust_localhost: bool,
    /// Where the admin token is, for the error message.
    pub admin_token_file: PathBuf,
}

/// Whether a dataplane (or zone ingress) token's own resource is what `path` names (it may
/// register and deregister itself, nothing else).
fn own_dataplane(claims: &Value, path: &str) -> bool {
    match claims["kind"].as_str() {
        Some("dataplane") => claims["mesh"]
            .as_str()
            .zip(claims["name"].as_str())
            .is_some_and(|(mesh, name)| path == format!("/meshes/{mesh}/dataplanes/{name}")),
        Some("zone-ingress") => claims["name"]
            .as_str()
            .is_some_and(|name| path == format!("/zoneingresses/{name}")),
        _ => false,
    }
}

/// Checks an xDS stream's token (if any) against the Dataplane it claims to be: a token for
/// another Dataplane, or an invalid one, is refused; no token is accepted only from this host
/// when it is trusted.
pub fn check_dataplane(
    auth: &Auth,
    token: Option<&str>,
    mesh: &str,
    name: &str,
    peer_is_local: bool,
) -> Result<(), String> {
    let Some(token) = token else {
        return if peer_is_local && auth.trust_localhost {
            Ok(())
        } else {
            Err("no dataplane token: start meridian-dp with --dataplane-token-file (meshctl generate dataplane-token)".into())
        };
    };
    let claims = auth
        .users
        .get()
        .ok_or("this control plane has no signing key yet")?
        .verify(token)?;
    if mesh == INGRESS_NODE_MESH {
        if claims["kind"] != "zone-ingress" || claims["name"] != name {
            return Err(format!(
                "not the token of zone ingress {name:?} (meshctl generate zone-ingress-token --name {name})"
            ));
        }
        return Ok(());
    }
    if claims["kind"] != "dataplane" {
        return Err("not a dataplane token".into());
    }
    if claims["mesh"] != mesh || claims["name"] != name {
        return Err(format!(
            "the token is for Dataplane {:?} in mesh {:?}, not {name:?} in {mesh:?}",
            claims["name"].as_str().unwrap_or(""),
            claims["mesh"].as_str().unwrap_or("")
        ));
    }
    Ok(())
}

fn is_admin(claims: &Value) -> bool {
    claims["kind"] == "user"
        && claims["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == ADMIN_GROUP))
}

fn refuse(status: StatusCode, title: &str, details: String) -> Response {
    let mut response = ApiError::new(status, title, details).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The middleware: see the module's picture.
pub async fn authorize(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let writes = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    match bearer {
        Some(value) => {
            let Some(token) = value.strip_prefix("Bearer ") else {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "the Authorization header must be `Bearer TOKEN`".into(),
                );
            };
            let verified = match auth.users.get() {
                Some(users) => users.verify(token),
                None => Err("this control plane has no signing key yet".into()),
            };
            match verified {
                Err(why) => refuse(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    format!("invalid token: {why}"),
                ),
                Ok(claims)
                    if writes && !is_admin(&claims) && !own_dataplane(&claims, request.uri().path()) =>
                {
                    refuse(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        format!(
                            "this {} token may not change resources: that takes a user token in the {ADMIN_GROUP} group",
                            claims["kind"].as_str().unwrap_or("unknown")
                        ),
                    )
                }
                Ok(_) => next.run(request).await,
            }
        }
        None if !writes => next.run(request).await,
        None => {
            let local = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .is_some_and(|c| c.0.ip().is_loopback());
            if local && auth.trust_localhost {
                next.run(request).await
            } else {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    format!(
                        "changes need a token: send `Authorization: Bearer TOKEN` (meshctl --token or MESHCTL_TOKEN); the admin token is in {}",
                        auth.admin_token_file.display()
                    ),
                )
            }
        }
    }
}

/// `POST /tokens/user` with `{"name": N, "groups": [...], "validFor": "24h"}`: a user token
/// (text). Only admins reach it (it is a write). Members of `mesh-system:admin` may change
/// resources; other users may read, and are refused changes with 403.
/// `POST /tokens/dataplane` with `{"mesh": M, "name": N}`: the token a Dataplane's sidecar
/// shows on xDS and when it registers itself (verified by this control plane's nodes).
/// `POST /tokens/zone-ingress` with `{"name": N}`: the same for the zone ingress N.
pub fn routes(auth: Auth) -> axum::Router {
    use axum::routing::post;
    async fn issue(
        State(auth): State<Auth>,
        axum::Json(body): axum::Json<Value>,
    ) -> Result<String, ApiError> {
        let name = body["name"]
            .as_str()
            .filter(|n| !n.is_empty() && n.len() <= 253)
            .ok_or_else(|| ApiError::bad_field("name", "must name the user"))?;
        let groups = match &body["groups"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .map(|g| g.as_str().filter(|g| !g.is_empty()).map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| ApiError::bad_field("groups", "must be a list of group names"))?,
            _ => return Err(ApiError::bad_field("groups", "must be a list of group names")),
        };
        let valid_for = valid_for(&body, Duration::from_secs(24 * 3600))?;
        let users = signer(&auth)?;
        tracing::info!(user = name, groups = ?groups, "user token issued");
        Ok(users.issue(
            json!({ "kind": "user", "name": name, "groups": groups }),
            valid_for,
        ))
    }
    async fn issue_dataplane(
        State(auth): State<Auth>,
        axum::Json(body): axum::Json<Value>,
    ) -> Result<String, ApiError> {
        let field = |name: &str| {
            body[name]
                .as_str()
                .filter(|v| meridian_model::validate::dns1123_label(v).is_ok())
                .ok_or_else(|| ApiError::bad_field(name, "must be a DNS-1123 label"))
        };
        let (mesh, name) = (field("mesh")?, field("name")?);
        let valid_for = valid_for(&body, Duration::from_secs(365 * 24 * 3600))?;
        let users = signer(&auth)?;
        tracing::info!(mesh, dataplane = name, "dataplane token issued");
        Ok(users.issue(
            json!({ "kind": "dataplane", "mesh": mesh, "name": name }),
            valid_for,
        ))
    }
    async fn issue_ingress(
        State(auth): State<Auth>,
        axum::Json(body): axum::Json<Value>,
    ) -> Result<String, ApiError> {
        let name = body["name"]
            .as_str()
            .filter(|v| meridian_model::validate::dns1123_label(v).is_ok())
            .ok_or_else(|| ApiError::bad_field("name", "must be a DNS-1123 label"))?;
        let valid_for = valid_for(&body, Duration::from_secs(365 * 24 * 3600))?;
        let users = signer(&auth)?;
        tracing::info!(ingress = name, "zone ingress token issued");
        Ok(users.issue(json!({ "kind": "zone-ingress", "name": name }), valid_for))
    }
    axum::Router::new()
        .route("/tokens/user", post(issue))
        .route("/tokens/dataplane", post(issue_dataplane))
        .route("/tokens/zone-ingress", post(issue_ingress))
        .with_state(auth)
}

/// `validFor` from a token request: a positive duration, or `default` when absent.
pub fn valid_for(body: &Value, default: Duration) -> Result<Duration, ApiError> {
    match &body["validFor"] {
        Value::Null => Ok(default),
        Value::String(text) => meridian_model::values::GoDuration::parse(text)
            .map(|d| d.as_duration())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                ApiError::bad_field(
                    "validFor",
                    format!("{text:?} is not a positive duration such as 24h"),
                )
            }),
        other => Err(ApiError::bad_field(
            "validFor",
            format!("expected a duration such as \"24h\", got {other}"),
        )),
    }
}

fn signer(auth: &Auth) -> Result<&Signer, ApiError> {
    auth.users.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "this control plane has no signing key yet",
        )
    })
}

/// Writes an admin token to `dir/admin-token` (owner-only) unless one is there. Returns the
/// file, and whether it was written now.
pub fn ensure_admin_token(users: &Signer, dir: &Path) -> std::io::Result<(PathBuf, bool)> {
    let file = dir.join("admin-token");
    if file.exists() {
        return Ok((file, false));
    }
    std::fs::create_dir_all(dir)?;
    let token = users.issue(
        json!({ "kind": "user", "name": "admin", "groups": [ADMIN_GROUP] }),
        Duration::from_secs(10 * 365 * 24 * 3600),
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options.open(&file)?.write_all(format!("{token}\n").as_bytes())?;
    Ok((file, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_until_they_expire() {
        let signer = Signer::with_key(&[1; 32]);
        let token = signer.issue(
            json!({"kind": "user", "groups": [ADMIN_GROUP]}),
            Duration::from_secs(60),
        );
        let claims = signer.verify(&token).expect("valid");
        assert!(is_admin(&claims));
        assert!(
            Signer::with_key(&[2; 32])
                .verify(&token)
                .is_err_and(|e| e.contains("signature"))
        );
        assert!(signer.verify("garbage").is_err());
        let expired = signer.issue(json!({"kind": "user"}), Duration::ZERO);
        assert!(signer.verify(&expired).is_err_and(|e| e.contains("expired")));
        assert!(!is_admin(&json!({"kind": "zone", "groups": [ADMIN_GROUP]})));
    }

    #[test]
    fn a_proxy_token_opens_only_its_own_door() {
        let signer = Signer::with_key(&[3; 32]);
        let users = std::sync::OnceLock::new();
        let _ = users.set(signer.clone());
        let auth = Auth {
            users: Arc::new(users),
            trust_localhost: false,
            admin_token_file: PathBuf::new(),
        };
        let year = Duration::from_secs(3600);
        let dp = signer.issue(
            json!({"kind": "dataplane", "mesh": "default", "name": "web-1"}),
            year,
        );
        let ingress = signer.issue(json!({"kind": "zone-ingress", "name": "ingress-1"}), year);
        assert!(check_dataplane(&auth, Some(&dp), "default", "web-1", false).is_ok());
        assert!(check_dataplane(&auth, Some(&dp), "default", "web-2", false).is_err());
        assert!(check_dataplane(&auth, Some(&ingress), INGRESS_NODE_MESH, "ingress-1", false).is_ok());
        assert!(check_dataplane(&auth, Some(&dp), INGRESS_NODE_MESH, "web-1", false).is_err());
        assert!(check_dataplane(&auth, Some(&ingress), "default", "ingress-1", false).is_err());
        assert!(check_dataplane(&auth, None, INGRESS_NODE_MESH, "ingress-1", false).is_err());
        let claims = |t: &str| signer.verify(t).expect("valid");
        assert!(own_dataplane(&claims(&ingress), "/zoneingresses/ingress-1"));
        assert!(!own_dataplane(&claims(&ingress), "/zoneingresses/ingress-2"));
        assert!(!own_dataplane(
            &claims(&ingress),
            "/meshes/default/dataplanes/ingress-1"
        ));
        assert!(own_dataplane(&claims(&dp), "/meshes/default/dataplanes/web-1"));
        assert!(!own_dataplane(&claims(&dp), "/zoneingresses/web-1"));
    }
}
