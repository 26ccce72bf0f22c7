//! Mutual TLS between a zone's Raft nodes: only a node holding a certificate from the zone's
//! peer CA may speak on the Raft port, and each node's certificate names it.
//!
//! ```text
//!   zone-cp generate peer-certs --zone zone-1 --nodes 1,2,3 --dir DIR
//!     DIR/ca.crt, ca.key          the zone's peer CA (keep ca.key off the nodes)
//!     DIR/node-N.crt, node-N.key  DNS SAN node-N.zone-1.raft.meridian
//!
//!   node 1 ──TLS, verifies the server is node-2.zone-1.raft.meridian──> node 2
//!          <──verifies node 1's certificate chains to the CA; the RPC's
//!             sender (leader, candidate) must be the node the certificate names
//! ```
//!
//! The name a node is checked by does not depend on the address it is dialled at, so NAT,
//! proxies and `--raft-dial` routes need nothing in the certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use meridian_api::ca::{SanType, new_ca, sign_leaf};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::NodeId;

/// The peer CA's subject (rebuilt to sign; the zone is in each node's name instead).
const CA_NAME: &str = "Meridian Raft peer CA";
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a TLS handshake on the Raft port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The DNS name in node `id`'s certificate: what the other nodes check it by.
pub fn node_name(zone: &str, id: NodeId) -> String {
    format!("node-{id}.{zone}.raft.meridian")
}

/// The three files of `--raft-tls-cert`, `--raft-tls-key`, `--raft-tls-ca`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// This node's peer identity and the zone's CA.
pub struct PeerTls {
    zone: String,
    ca: Certificate,
    identity: Identity,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl PeerTls {
    /// Loads node `id`'s certificate, key and the CA, and checks that the certificate is the
    /// node's own and was signed by that CA, so a mix-up fails here rather than at every
    /// handshake.
    pub fn load(zone: &str, id: NodeId, files: &TlsFiles) -> anyhow::Result<Arc<Self>> {
        let (cert, key, ca) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
        let leaf = CertificateDer::from_pem_slice(&cert)
            .with_context(|| format!("{} is not a PEM certificate", files.cert.display()))?;
        let ca_der = CertificateDer::from_pem_slice(&ca)
            .with_context(|| format!("{} is not a PEM certificate", files.ca.display()))?;
        let name = node_name(zone, id);
        let end = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| anyhow::anyhow!("{}: {e}", files.cert.display()))?;
        if end
            .verify_is_valid_for_subject_name(&server_name(&name)?)
            .is_err()
        {
            bail!(
                "{} is not the certificate of node {id} of zone {zone} (it must name {name}): zone-cp generate peer-certs --zone {zone} --nodes {id}",
                files.cert.display()
            );
        }
        let anchor = webpki::anchor_from_trusted_cert(&ca_der)
            .map_err(|e| anyhow::anyhow!("{}: {e}", files.ca.display()))?;
        end.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{} does not verify against the CA {}: {e}",
                files.cert.display(),
                files.ca.display()
            )
        })?;
        Ok(Arc::new(Self {
            zone: zone.to_owned(),
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        }))
    }

    /// The server side: a client certificate from the zone's CA is required.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The client side, dialling node `target`: its certificate must name it.
    pub fn client(&self, target: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(node_name(&self.zone, target))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Whether the caller's certificate (already verified against the CA in the handshake)
    /// names node `id` of this zone.
    pub fn names(&self, peer: &[CertificateDer<'static>], id: NodeId) -> bool {
        let Some(leaf) = peer.first() else {
            return false;
        };
        let Ok(name) = server_name(&node_name(&self.zone, id)) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).map_err(|e| anyhow::anyhow!("{name:?} is not a DNS name: {e}"))
}

/// Writes the zone's peer CA into `dir` (unless it is there) and a certificate for each of
/// `nodes`, signed by it. Keys are written owner-only. Returns the files written.
pub fn generate(
    zone: &str,
    nodes: &[NodeId],
    dir: &Path,
    valid_for: Duration,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let mut written = Vec::new();
    let key = if ca_cert.exists() && ca_key.exists() {
        std::fs::read_to_string(&ca_key).with_context(|| format!("reading {}", ca_key.display()))?
    } else {
        let (cert, key) = new_ca(CA_NAME, Vec::new(), CA_LIFETIME)?;
        write_private(&ca_key, &key)?;
        std::fs::write(&ca_cert, cert).with_context(|| format!("writing {}", ca_cert.display()))?;
        written.extend([ca_cert.clone(), ca_key.clone()]);
        key
    };
    for &id in nodes {
        let name = node_name(zone, id);
        let san = SanType::DnsName(name.clone().try_into()?);
        let leaf = sign_leaf(CA_NAME, &key, &[san], valid_for)?;
        let (cert, key_file) = (
            dir.join(format!("node-{id}.crt")),
            dir.join(format!("node-{id}.key")),
        );
        write_private(&key_file, &leaf.key)?;
        std::fs::write(&cert, &leaf.cert).with_context(|| format!("writing {}", cert.display()))?;
        written.extend([cert, key_file]);
    }
    Ok(written)
}

/// Writes a file only its owner can read, from its creation on.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, id: NodeId) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("node-{id}.crt")),
            key: dir.join(format!("node-{id}.key")),
            ca: dir.join("ca.crt"),
        }
    }

    #[test]
    fn a_node_loads_only_its_own_certificate_from_its_own_ca() {
        let dir = tempfile::tempdir().expect("dir");
        generate("zone-1", &[1, 2], dir.path(), Duration::from_secs(3600)).expect("generate");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("node-1.key"))
                .expect("key")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let tls = PeerTls::load("zone-1", 1, &files(dir.path(), 1)).expect("node 1");
        // Node 2's certificate is not node 1's, nor is node 1's good for another zone.
        let err = PeerTls::load(
            "zone-1",
            1,
            &TlsFiles {
                cert: dir.path().join("node-2.crt"),
                ..files(dir.path(), 1)
            },
        )
        .expect_err("node 2's certificate");
        assert!(err.to_string().contains("not the certificate of node 1"), "{err}");
        assert!(PeerTls::load("zone-2", 1, &files(dir.path(), 1)).is_err());
        // A second run adds a node under the same CA.
        generate("zone-1", &[3], dir.path(), Duration::from_secs(3600)).expect("node 3");
        PeerTls::load("zone-1", 3, &files(dir.path(), 3)).expect("node 3 under the same CA");
        // Another CA's certificate does not verify.
        let other = tempfile::tempdir().expect("dir");
        generate("zone-1", &[1], other.path(), Duration::from_secs(3600)).expect("other CA");
        let err = PeerTls::load(
            "zone-1",
            1,
            &TlsFiles {
                ca: other.path().join("ca.crt"),
                ..files(dir.path(), 1)
            },
        )
        .expect_err("another CA");
        assert!(err.to_string().contains("does not verify"), "{err}");
        let peer = vec![
            CertificateDer::from_pem_slice(&std::fs::read(dir.path().join("node-2.crt")).expect("read"))
                .expect("pem"),
        ];
        assert!(tls.names(&peer, 2));
        assert!(!tls.names(&peer, 1));
        assert!(!tls.names(&[], 2));
    }
}
