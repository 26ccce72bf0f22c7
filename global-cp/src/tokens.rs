//! Zone tokens: what a zone control plane shows global to be allowed to sync as that zone.
//!
//! `v1.<payload>.<signature>`, both parts base64url: the payload is JSON
//! `{"kind":"zone","zone":NAME,"iat":SECONDS,"exp":SECONDS}`, the signature HMAC-SHA256 over
//! `v1.<payload>` with a key kept in the store (so every replica verifies every token). The
//! key never leaves the store and is never logged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use meridian_store::{Store, StoreError};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

use std::time::Duration;

const KEY_NAME: &str = "zone-token";
/// How long a zone token is good for when its issuer does not say.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
const PREFIX: &str = "v1";

/// Signs and checks zone tokens.
#[derive(Clone)]
pub struct ZoneTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for ZoneTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZoneTokens { key: <secret> }")
    }
}

impl ZoneTokens {
    /// Loads the signing key from the store, creating it on first use.
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let mut candidate = [0u8; 32];
        SystemRandom::new()
            .fill(&mut candidate)
            .map_err(|_| StoreError::Internal("no randomness for a signing key".into()))?;
        let secret = store.secret(KEY_NAME, &B64.encode(candidate)).await?;
        let bytes = B64
            .decode(secret.as_bytes())
            .map_err(|_| StoreError::Internal("the stored zone-token key is not base64url".into()))?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// A token for `zone`, good for `valid_for`.
    pub fn issue(&self, zone: &str, valid_for: Duration) -> String {
        let iat = now_secs();
        let exp = iat.saturating_add(valid_for.as_secs());
        let payload = B64.encode(json!({ "kind": "zone", "zone": zone, "iat": iat, "exp": exp }).to_string());
        let signed = format!("{PREFIX}.{payload}");
        let signature = B64.encode(hmac::sign(&self.key, signed.as_bytes()).as_ref());
        format!("{signed}.{signature}")
    }

    /// Checks that `token` was issued here for `zone`.
    pub fn verify(&self, token: &str, zone: &str) -> Result<(), String> {
        let mut parts = token.trim().split('.');
        let (Some(PREFIX), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a Meridian zone token".into());
        };
        let signature = B64
            .decode(signature)
            .map_err(|_| "malformed signature".to_owned())?;
        hmac::verify(&self.key, format!("{PREFIX}.{payload}").as_bytes(), &signature).map_err(|_| {
            "the signature does not match: the token was not issued by this global control plane".to_owned()
        })?;
        let claims: serde_json::Value = B64
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or("malformed payload")?;
        if claims["kind"] != "zone" {
            return Err("not a zone token".into());
        }
        if let Some(exp) = claims["exp"].as_u64()
            && exp < now_secs()
        {
            return Err(format!(
                "the token expired at {}: generate a new one (meshctl generate zone-token --zone {})",
                meridian_model::rfc3339(exp.saturating_mul(1000) as i64),
                claims["zone"].as_str().unwrap_or("NAME")
            ));
        }
        match claims["zone"].as_str() {
            Some(z) if z == zone => Ok(()),
            Some(z) => Err(format!("the token is for zone {z:?}, not {zone:?}")),
            None => Err("the token names no zone".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(seed: u8) -> ZoneTokens {
        ZoneTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &[seed; 32]),
        }
    }

    #[test]
    fn tokens_verify_for_their_zone_only() {
        let t = tokens(1);
        let token = t.issue("zone-1", DEFAULT_VALIDITY);
        assert_eq!(t.verify(&token, "zone-1"), Ok(()));
        assert!(
            t.verify(&token, "zone-2")
                .is_err_and(|e| e.contains("for zone \"zone-1\""))
        );
        assert!(
            tokens(2)
                .verify(&token, "zone-1")
                .is_err_and(|e| e.contains("signature"))
        );
        assert!(t.verify("garbage", "zone-1").is_err());
        // A payload edited to claim another zone breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(json!({"kind": "zone", "zone": "zone-2", "iat": 0}).to_string());
        assert!(t.verify(&parts.join("."), "zone-2").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let t = tokens(1);
        let payload = B64.encode(json!({"kind": "zone", "zone": "zone-1", "iat": 0, "exp": 1}).to_string());
        let signed = format!("{PREFIX}.{payload}");
        let signature = B64.encode(hmac::sign(&t.key, signed.as_bytes()).as_ref());
        let err = t
            .verify(&format!("{signed}.{signature}"), "zone-1")
            .expect_err("expired");
        assert!(err.contains("expired at 1970-01-01T00:00:01"), "{err}");
        assert_eq!(
            t.verify(&t.issue("zone-1", Duration::from_secs(60)), "zone-1"),
            Ok(())
        );
    }
}
