use std::sync::Arc;
use std::time::Duration;

use meridian_store::SqlStore;

use super::*;

async fn mk_tokens() -> (tempfile::TempDir, Tokens) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqlStore::open_sqlite(dir.path()).await.expect("store");
    store.migrate().await.expect("migrate");
    (dir, Tokens::new(Arc::new(store)))
}

fn user(name: &str) -> Subject {
    Subject::User {
        name: name.into(),
        groups: vec!["mesh-system:admin".into()],
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_token_verifies_as_its_own_kind_only_and_not_once_expired() {
    let (_dir, tokens) = mk_tokens().await;
    let issued = tokens.issue(user("alice"), HOUR).await.expect("issue");
    assert!(issued.token.starts_with("ey"), "a JWT: {}", issued.token);
    let claims = tokens
        .verify(&issued.token, &[TokenKind::User])
        .await
        .expect("verify");
    assert_eq!(claims.subject, user("alice"));
    assert_eq!(claims.jti, issued.jti);
    let dp = tokens
        .issue(
            Subject::Dataplane {
                mesh: "default".into(),
                name: "web-1".into(),
                tags: Default::default(),
            },
            HOUR,
        )
        .await
        .expect("issue");
    let err = tokens
        .verify(&dp.token, &[TokenKind::User])
        .await
        .expect_err("wrong kind");
    assert!(matches!(err, TokenError::WrongKind { .. }), "{err}");
    let expired = tokens.issue(user("bob"), Duration::ZERO).await.expect("issue");
    let err = tokens
        .verify(&expired.token, &[TokenKind::User])
        .await
        .expect_err("expired");
    assert!(matches!(err, TokenError::Expired(_)), "{err}");
    for garbage in ["", "garbage", "a.b.c", &"x".repeat(MAX_TOKEN_LEN + 1)] {
        assert!(
            tokens.verify(garbage, &[TokenKind::User]).await.is_err(),
            "{garbage:.20}"
        );
    }
}

#[tokio::test]
async fn a_token_from_another_control_plane_or_altered_is_refused() {
    let (_a, ours) = mk_tokens().await;
    let (_b, theirs) = mk_tokens().await;
    ours.ensure_key(TokenKind::User).await.expect("key");
    let foreign = theirs.issue(user("mallory"), HOUR).await.expect("issue");
    let err = ours
        .verify(&foreign.token, &[TokenKind::User])
        .await
        .expect_err("foreign");
    assert!(matches!(err, TokenError::BadSignature), "{err}");
    // A claim changed after signing: a user token turned into a longer-lived one.
    let issued = ours.issue(user("alice"), HOUR).await.expect("issue");
    let mut parts: Vec<String> = issued.token.split('.').map(str::to_owned).collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(&parts[1]).expect("b64")).expect("json");
    claims["exp"] = (claims["exp"].as_u64().expect("exp") + 1_000_000).into();
    parts[1] = B64.encode(claims.to_string());
    let err = ours
        .verify(&parts.join("."), &[TokenKind::User])
        .await
        .expect_err("altered");
    assert!(matches!(err, TokenError::BadSignature), "{err}");
    // Another algorithm named in the header is refused before any key is looked at.
    let header = B64.encode(r#"{"alg":"HS256","typ":"JWT","kid":"user/1"}"#);
    let forged = format!("{header}.{}.{}", parts[1], parts[2]);
    let err = ours.verify(&forged, &[TokenKind::User]).await.expect_err("HS256");
    assert!(matches!(err, TokenError::Malformed(_)), "{err}");
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_the_others_are_not() {
    let (_dir, tokens) = mk_tokens().await;
    let a = tokens.issue(user("a"), HOUR).await.expect("issue");
    let b = tokens.issue(user("b"), HOUR).await.expect("issue");
    tokens.revoke(&a.jti, Some(a.exp)).await.expect("revoke");
    let err = tokens
        .verify(&a.token, &[TokenKind::User])
        .await
        .expect_err("revoked");
    assert!(matches!(err, TokenError::Revoked), "{err}");
    tokens
        .verify(&b.token, &[TokenKind::User])
        .await
        .expect("b stays good");
    assert!(tokens.revoke("not an id!", None).await.is_err());
}

#[tokio::test]
async fn after_a_rotation_the_new_key_signs_and_old_tokens_stay_good() {
    let (_dir, tokens) = mk_tokens().await;
    let old = tokens.issue(user("a"), HOUR).await.expect("issue");
    assert_eq!(tokens.rotate(TokenKind::User).await.expect("rotate"), 2);
    let new = tokens.issue(user("b"), HOUR).await.expect("issue");
    assert!(jwt::key_id(&new.token).expect("kid").ends_with("/2"));
    tokens
        .verify(&old.token, &[TokenKind::User])
        .await
        .expect("old still good");
    tokens
        .verify(&new.token, &[TokenKind::User])
        .await
        .expect("new good");
    let keys = tokens.keys().await.expect("keys");
    let user_keys: Vec<(u32, bool)> = keys
        .iter()
        .filter(|k| k.kind == TokenKind::User)
        .map(|k| (k.serial, k.signs))
        .collect();
    assert_eq!(user_keys, [(1, false), (2, true)], "only the newest signs");
    // The rotated key's private half is gone from the store.
    let stored = tokens
        .store
        .stored_secret("signing-key/user/1")
        .await
        .expect("read")
        .expect("kept");
    assert!(!stored.contains("private"), "{stored}");
}
