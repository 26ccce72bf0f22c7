//! A mesh's builtin certificate authority, and the certificates it issues to proxies.
//!
//! ```text
//!   Mesh with mtls.enabledBackend = builtin backend B
//!     └─> secret `mesh-ca/MESH/B` (created once, first writer wins: global, or a standalone zone)
//!           │ global sends it to every zone with the Mesh (sync), so all zones trust one root
//!           └─> zone-cp issues each proxy a short-lived leaf: URI SAN spiffe://MESH/SERVICE
//! ```
//!
//! Keys are ECDSA P-256. The CA is stored as JSON `{cert, key}` (PEM); it never leaves the
//! store except on the authenticated sync stream, and is never logged or served over REST.

use std::time::{Duration, SystemTime};

use meridian_store::{Store, StoreError};
pub use rcgen::SanType;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// How long a builtin CA is valid (Kuma's default is ten years).
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are dated a little in the past, so clocks a bit behind still accept them.
const BACKDATE: Duration = Duration::from_secs(60);
/// Secrets holding CAs are named with this prefix (`mesh-ca/MESH/BACKEND`).
pub const SECRET_PREFIX: &str = "mesh-ca/";

/// The store name of the CA of `mesh`'s backend `backend`.
pub fn secret_name(mesh: &str, backend: &str) -> String {
    format!("{SECRET_PREFIX}{mesh}/{backend}")
}

/// The SPIFFE id of a service of a mesh.
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// A mesh's CA: its certificate and private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshCa {
    pub cert: String,
    key: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("cert", &format!("{} bytes", self.cert.len()))
            .field("key", &"<secret>")
            .finish()
    }
}

/// A proxy's certificate and key, and when it should be replaced.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub not_after: SystemTime,
    /// Four fifths into its life: early enough that a slow push still beats expiry.
    pub renew_at: SystemTime,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("not_after", &self.not_after)
            .field("key", &"<secret>")
            .finish()
    }
}

/// How long after the epoch `t` is (certificate dates are the epoch plus this).
fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// A CA's own parameters, the same wherever they are rebuilt: any holder of the stored key can
/// sign as the CA, and leaves name it as their issuer by this subject.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Meridian");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Dates `params` from a little before now to `lifetime` after it; returns the end.
fn dated(params: &mut CertificateParams, lifetime: Duration) -> SystemTime {
    let now = SystemTime::now();
    let not_after = now + lifetime;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(now - BACKDATE);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
    params.serial_number = Some(serial());
    not_after
}

/// A new self-signed CA named `common_name`: its certificate and key, both PEM.
pub fn new_ca(
    common_name: &str,
    sans: Vec<SanType>,
    lifetime: Duration,
) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(common_name);
    dated(&mut params, lifetime);
    params.subject_alt_names = sans;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A certificate for `sans` (the first names it), usable as TLS server and client, signed by
/// the CA [`new_ca`] made as `ca_common_name` with the key `ca_key` (PEM).
pub fn sign_leaf(
    ca_common_name: &str,
    ca_key: &str,
    sans: &[SanType],
    lifetime: Duration,
) -> Result<Leaf, CaError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(|e| CaError::Stored(format!("key: {e}")))?;
    let issuer = Issuer::new(ca_params(ca_common_name), ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Meridian");
    match sans.first() {
        Some(SanType::URI(uri)) => dn.push(DnType::CommonName, uri.as_str()),
        Some(SanType::DnsName(name)) => dn.push(DnType::CommonName, name.as_str()),
        _ => {}
    }
    params.distinguished_name = dn;
    params.subject_alt_names = sans.to_vec();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    let not_after = dated(&mut params, lifetime);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after,
        renew_at: now + lifetime.mul_f64(0.8),
    })
}

fn mesh_ca_name(mesh: &str) -> String {
    format!("Meridian CA for mesh {mesh}")
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("the stored CA is not valid: {0}")]
    Stored(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MeshCa {
    /// A new self-signed CA for `mesh`, whose SPIFFE trust domain is the mesh name.
    pub fn generate(mesh: &str) -> Result<Self, CaError> {
        let san = SanType::URI(format!("spiffe://{mesh}").try_into()?);
        let (cert, key) = new_ca(&mesh_ca_name(mesh), vec![san], CA_LIFETIME)?;
        Ok(Self { cert, key })
    }

    /// Parses a stored CA (the JSON written by [`MeshCa::to_secret`]).
    pub fn from_secret(value: &str) -> Result<Self, CaError> {
        let ca: Self = serde_json::from_str(value).map_err(|e| CaError::Stored(e.to_string()))?;
        if !ca.cert.starts_with("-----BEGIN CERTIFICATE-----") {
            return Err(CaError::Stored("cert is not a PEM certificate".into()));
        }
        KeyPair::from_pem(&ca.key).map_err(|e| CaError::Stored(format!("key: {e}")))?;
        Ok(ca)
    }

    pub fn to_secret(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The CA of `mesh`'s backend: the stored one (a read), or a new one stored now (the
    /// first writer wins, so concurrent callers agree).
    pub async fn ensure(store: &dyn Store, mesh: &str, backend: &str) -> Result<Self, CaError> {
        let name = secret_name(mesh, backend);
        if let Some(stored) = store.stored_secret(&name).await? {
            return Self::from_secret(&stored);
        }
        let candidate = Self::generate(mesh)?.to_secret();
        Self::from_secret(&store.secret(&name, &candidate).await?)
    }

    /// A short hash of the CA certificate: leaves issued by another CA are stale.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.cert.as_bytes());
        digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Issues a certificate for `ids` (SPIFFE URIs, the first one is the identity) valid for
    /// `lifetime` from now, usable as both TLS server and client.
    pub fn issue(&self, mesh: &str, ids: &[String], lifetime: Duration) -> Result<Leaf, CaError> {
        let sans = ids
            .iter()
            .map(|id| Ok(SanType::URI(id.clone().try_into()?)))
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        sign_leaf(&mesh_ca_name(mesh), &self.key, &sans, lifetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64")
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_leaf_carries_its_spiffe_ids_and_is_signed_by_the_mesh_ca() {
        let ca = MeshCa::generate("default").expect("ca");
        let stored = MeshCa::from_secret(&ca.to_secret()).expect("round trip");
        assert_eq!(stored, ca);
        let ids = vec![spiffe_id("default", "reg-server")];
        let leaf = stored
            .issue("default", &ids, Duration::from_secs(120))
            .expect("leaf");
        let cert = der(&leaf.cert);
        assert!(contains(&cert, b"spiffe://default/reg-server"));
        // The leaf names the CA as its issuer: the CA's subject is inside it.
        assert!(contains(&cert, b"Meridian CA for mesh default"));
        assert!(leaf.renew_at < leaf.not_after);
        assert!(leaf.key.contains("PRIVATE KEY"));
        assert!(
            !format!("{leaf:?}{ca:?}").contains("PRIVATE"),
            "keys never reach Debug output"
        );
    }

    #[test]
    fn a_damaged_secret_is_refused() {
        assert!(MeshCa::from_secret("{}").is_err());
        assert!(MeshCa::from_secret(r#"{"cert":"x","key":"y"}"#).is_err());
        let ca = MeshCa::generate("m").expect("ca");
        let broken = ca.to_secret().replace("BEGIN PRIVATE KEY", "BEGIN NOTHING");
        assert!(MeshCa::from_secret(&broken).is_err());
    }
}
