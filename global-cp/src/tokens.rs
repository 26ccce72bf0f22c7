//! Zone tokens: what a zone control plane shows global to be allowed to sync as that zone.
//!
//! `v1.<payload>.<signature>`, both parts base64url: the payload is JSON
//! `{"kind":"zone","zone":NAME,"iat":SECONDS}`, the signature HMAC-SHA256 over
//! `v1.<payload>` with a key kept in the store (so every replica verifies every token). The
//! key never leaves the store and is never logged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use meridian_store::{Store, StoreError};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

const KEY_NAME: &str = "zone-token";
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

    /// A token for `zone`.
    pub fn issue(&self, zone: &str) -> String {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let payload = B64.encode(json!({ "kind": "zone", "zone": zone, "iat": iat }).to_string());
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
        let token = t.issue("zone-1");
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
}
