//! Zone tokens: what a zone control plane shows global to be allowed to sync as that zone.
//! Signed tokens (see `meridian_api::auth`) with the claims `{"kind":"zone","zone":NAME}`,
//! under their own key (`zone-token` in the store).

use std::time::Duration;

use meridian_api::auth::Signer;
use meridian_store::{Store, StoreError};
use serde_json::json;

const KEY_NAME: &str = "zone-token";
/// How long a zone token is good for when its issuer does not say.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Signs and checks zone tokens.
#[derive(Clone, Debug)]
pub struct ZoneTokens {
    signer: Signer,
}

impl ZoneTokens {
    /// Loads the signing key from the store, creating it on first use.
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        Ok(Self {
            signer: Signer::load(store, KEY_NAME).await?,
        })
    }

    /// A token for `zone`, good for `valid_for`.
    pub fn issue(&self, zone: &str, valid_for: Duration) -> String {
        self.signer
            .issue(json!({ "kind": "zone", "zone": zone }), valid_for)
    }

    /// Checks that `token` was issued here for `zone` and has not expired.
    pub fn verify(&self, token: &str, zone: &str) -> Result<(), String> {
        let claims = self.signer.verify(token).map_err(|e| {
            if e.contains("expired") {
                format!("{e}: generate a new one (meshctl generate zone-token --zone {zone})")
            } else {
                e
            }
        })?;
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
            signer: Signer::with_key(&[seed; 32]),
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
        let user = t.signer.issue(json!({"kind": "user"}), DEFAULT_VALIDITY);
        assert!(
            t.verify(&user, "zone-1")
                .is_err_and(|e| e.contains("not a zone token"))
        );
    }

    #[test]
    fn expired_tokens_are_refused_with_how_to_renew() {
        let t = tokens(1);
        let expired = t.issue("zone-1", Duration::ZERO);
        let err = t.verify(&expired, "zone-1").expect_err("expired");
        assert!(
            err.contains("expired") && err.contains("meshctl generate zone-token"),
            "{err}"
        );
    }
}
