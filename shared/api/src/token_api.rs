//! The token endpoints (admins only), and the admin token a control plane writes for its
//! owner.
//!
//! ```text
//!   POST /tokens/user            {name, groups, validFor}          a user token (text)
//!   POST /tokens/dataplane       {mesh, name, tags, validFor}      zone only
//!   POST /tokens/zone-ingress    {name, validFor}                  zone only
//!   POST /tokens/zone            {zone, validFor}                  global only
//!   POST /tokens/revocations     {token} or {id}                   refused from now on
//!   GET  /tokens/signing-keys                                      serials, which signs
//!   POST /tokens/signing-keys    {kind}                            rotate: a new key signs
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use crate::ApiError;
use crate::auth::ADMIN_GROUP;
use crate::body;
use crate::tokens::{Subject, TokenError, TokenKind, Tokens};

/// How long a token is good for when its request does not say: a user's, a day; a proxy's
/// or a zone's, a year.
const USER_VALIDITY: Duration = Duration::from_secs(24 * 3600);
const PROXY_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// No token is issued for longer.
const MAX_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The admin token in the data dir: good for a day, rewritten when half of that is left.
pub const ADMIN_TOKEN_VALIDITY: Duration = Duration::from_secs(24 * 3600);

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Store(e) => e.into(),
            other => ApiError::bad_field("token", other.to_string()),
        }
    }
}

/// `validFor` from a request: a positive duration up to ten years, or `default`.
fn valid_for(text: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    let Some(text) = text else { return Ok(default) };
    meridian_model::values::GoDuration::parse(text)
        .map(|d| d.as_duration())
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_VALIDITY)
        .ok_or_else(|| {
            ApiError::bad_field(
                "validFor",
                format!("{text:?} is not a positive duration of at most ten years, such as 24h"),
            )
        })
}

fn label(field: &str, value: &str) -> Result<(), ApiError> {
    meridian_model::validate::dns1123_label(value)
        .map_err(|e| ApiError::bad_field(field, format!("{value:?} {e}")))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UserTokenRequest {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    valid_for: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DataplaneTokenRequest {
    #[serde(default = "default_mesh")]
    mesh: String,
    name: String,
    /// The tag values the Dataplane may claim, e.g. `{"kuma.io/service": ["web"]}`.
    #[serde(default)]
    tags: BTreeMap<String, Vec<String>>,
    valid_for: Option<String>,
}

fn default_mesh() -> String {
    meridian_model::DEFAULT_MESH.to_owned()
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct IngressTokenRequest {
    name: String,
    valid_for: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ZoneTokenRequest {
    zone: String,
    valid_for: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// The token itself (its id is read from it)...
    token: Option<String>,
    /// ...or its id (`jti`), as logged when it was issued.
    id: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RotateRequest {
    kind: String,
}

async fn issue(tokens: &Tokens, subject: Subject, valid_for: Duration) -> Result<String, ApiError> {
    let kind = subject.kind();
    let issued = tokens.issue(subject.clone(), valid_for).await?;
    info!(kind = %kind, id = %issued.jti, subject = ?subject, valid_for = ?valid_for, "token issued");
    Ok(issued.token)
}

async fn issue_user(
    State(tokens): State<Tokens>,
    headers: HeaderMap,
    body: Body,
) -> Result<String, ApiError> {
    let r: UserTokenRequest = body::json(&headers, body).await?;
    if r.name.is_empty() || r.name.len() > 253 {
        return Err(ApiError::bad_field(
            "name",
            "must name the user (1 to 253 characters)",
        ));
    }
    if let Some(bad) = r.groups.iter().find(|g| g.is_empty() || g.len() > 253) {
        return Err(ApiError::bad_field(
            "groups",
            format!("{bad:?} is not a group name"),
        ));
    }
    let valid_for = valid_for(r.valid_for.as_deref(), USER_VALIDITY)?;
    let subject = Subject::User {
        name: r.name,
        groups: r.groups,
    };
    issue(&tokens, subject, valid_for).await
}

async fn issue_dataplane(
    State(tokens): State<Tokens>,
    headers: HeaderMap,
    body: Body,
) -> Result<String, ApiError> {
    let r: DataplaneTokenRequest = body::json(&headers, body).await?;
    label("mesh", &r.mesh)?;
    label("name", &r.name)?;
    for (key, values) in &r.tags {
        if key.is_empty() || values.is_empty() || values.iter().any(String::is_empty) {
            return Err(ApiError::bad_field(
                &format!("tags.{key}"),
                "must list one or more values the Dataplane may claim",
            ));
        }
    }
    let valid_for = valid_for(r.valid_for.as_deref(), PROXY_VALIDITY)?;
    let subject = Subject::Dataplane {
        mesh: r.mesh,
        name: r.name,
        tags: r.tags,
    };
    issue(&tokens, subject, valid_for).await
}

async fn issue_ingress(
    State(tokens): State<Tokens>,
    headers: HeaderMap,
    body: Body,
) -> Result<String, ApiError> {
    let r: IngressTokenRequest = body::json(&headers, body).await?;
    label("name", &r.name)?;
    let valid_for = valid_for(r.valid_for.as_deref(), PROXY_VALIDITY)?;
    issue(&tokens, Subject::ZoneIngress { name: r.name }, valid_for).await
}

async fn issue_zone(
    State(tokens): State<Tokens>,
    headers: HeaderMap,
    body: Body,
) -> Result<String, ApiError> {
    let r: ZoneTokenRequest = body::json(&headers, body).await?;
    label("zone", &r.zone)?;
    let valid_for = valid_for(r.valid_for.as_deref(), PROXY_VALIDITY)?;
    issue(&tokens, Subject::Zone { zone: r.zone }, valid_for).await
}

async fn revoke(
    State(tokens): State<Tokens>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let r: RevokeRequest = body::json(&headers, body).await?;
    let (id, exp) = match (r.token, r.id) {
        (Some(token), None) => {
            // Only a token issued here: verifying it also says it is not expired yet.
            let claims = tokens.verify(&token, &TokenKind::ALL).await?;
            (claims.jti, Some(claims.exp))
        }
        (None, Some(id)) => (id, None),
        _ => return Err(ApiError::bad_field("", "give either token or id")),
    };
    tokens
        .revoke(&id, exp)
        .await
        .map_err(|e| ApiError::bad_field("id", e.to_string()))?;
    info!(id = %id, "token revoked");
    Ok(Json(json!({ "revoked": id })))
}

async fn list_keys(State(tokens): State<Tokens>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "items": tokens.keys().await? })))
}

async fn rotate(
    State(tokens): State<Tokens>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let r: RotateRequest = body::json(&headers, body).await?;
    let kind = TokenKind::from_name(&r.kind)
        .ok_or_else(|| ApiError::bad_field("kind", "must be one of user, dataplane, zone-ingress, zone"))?;
    let serial = tokens.rotate(kind).await?;
    info!(kind = %kind, serial, "signing key rotated");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "kind": kind, "serial": serial })),
    ))
}

/// The token routes of a control plane that issues `issues`.
pub fn routes(tokens: Tokens, issues: &[TokenKind]) -> axum::Router {
    let mut router = axum::Router::new()
        .route("/tokens/revocations", post(revoke))
        .route("/tokens/signing-keys", get(list_keys).post(rotate));
    for kind in issues {
        router = match kind {
            TokenKind::User => router.route("/tokens/user", post(issue_user)),
            TokenKind::Dataplane => router.route("/tokens/dataplane", post(issue_dataplane)),
            TokenKind::ZoneIngress => router.route("/tokens/zone-ingress", post(issue_ingress)),
            TokenKind::Zone => router.route("/tokens/zone", post(issue_zone)),
        };
    }
    router.with_state(tokens)
}

/// Writes an admin token to `dir/admin-token` (owner-only) unless the one there is good for
/// at least half its life, and keeps it so while the process runs. Returns the file.
pub async fn keep_admin_token(tokens: Tokens, dir: &Path) -> Result<PathBuf, TokenError> {
    let file = dir.join("admin-token");
    renew_admin_token(&tokens, &file).await?;
    let watched = file.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            if let Err(e) = renew_admin_token(&tokens, &watched).await {
                tracing::warn!(error = %e, "renewing the admin token failed");
            }
        }
    });
    Ok(file)
}

async fn renew_admin_token(tokens: &Tokens, file: &Path) -> Result<(), TokenError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Ok(text) = std::fs::read_to_string(file)
        && let Ok(claims) = tokens.verify(&text, &[TokenKind::User]).await
        && claims.exp.saturating_sub(now) > ADMIN_TOKEN_VALIDITY.as_secs() / 2
    {
        return Ok(());
    }
    let subject = Subject::User {
        name: "admin".into(),
        groups: vec![ADMIN_GROUP.into()],
    };
    let issued = tokens.issue(subject, ADMIN_TOKEN_VALIDITY).await?;
    // Written beside and renamed, so a reader never sees half a token.
    let partial = file.with_extension("partial");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&partial);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        f.write_all(format!("{}\n", issued.token).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&partial, file)
    };
    write().map_err(|e| meridian_store::StoreError::Internal(format!("writing {}: {e}", file.display())))?;
    info!(file = %file.display(), id = %issued.jti, "admin token written (good for 24h, renewed while running)");
    Ok(())
}
