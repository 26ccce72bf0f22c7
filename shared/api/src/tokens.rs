//! Signed tokens: JWTs signed with Ed25519 (EdDSA), one key set per kind of token.
//!
//! ```text
//!   store secrets   signing-key/user/1   {"public": ..}              verifies only (rotated)
//!                   signing-key/user/2   {"public": .., "private": ..} signs new tokens
//!                   revoked-token/JTI    the revoked token's expiry (`unknown` if revoked by id)
//!
//!   token = base64url({alg: EdDSA, typ: JWT, kid: "user/2"})
//!         . base64url({kind: user, name, groups, jti, iat, exp})
//!         . base64url(Ed25519 signature)
//! ```
//!
//! A token is checked against the public keys of its kind only, so no claim can turn one kind
//! into another, and what verifies a token cannot mint one: verifying holds public keys and
//! the revocation list in memory; a private key is read from the store only to sign. Rotating
//! a kind's key makes a new one sign; the old one keeps only its public half, so tokens it
//! signed stay good until they expire (or are revoked). The store (its files are owner-only)
//! holds the private keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use meridian_store::{Store, StoreError};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// The longest token read: anything longer is refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// How stale the in-memory keys and revocations may be: a revocation or rotation made
/// through another replica (or node) takes effect here within this.
const REFRESH: Duration = Duration::from_secs(1);
const KEY_PREFIX: &str = "signing-key/";
const REVOKED_PREFIX: &str = "revoked-token/";

/// What a token is for; each kind has its own signing keys.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    /// A person or a program using the REST API.
    User,
    /// A sidecar: its xDS stream, and registering its own Dataplane.
    Dataplane,
    /// A zone ingress: the same, for its ZoneIngress.
    ZoneIngress,
    /// A zone control plane syncing with global.
    Zone,
}

impl TokenKind {
    pub const ALL: [TokenKind; 4] = [Self::User, Self::Dataplane, Self::ZoneIngress, Self::Zone];

    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Dataplane => "dataplane",
            Self::ZoneIngress => "zone-ingress",
            Self::Zone => "zone",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Subject {
    User {
        name: String,
        #[serde(default)]
        groups: Vec<String>,
    },
    /// A Dataplane, and the tag values it may claim (Kuma's `--tag`): every tag named here
    /// must be on the Dataplane's inbounds, with only these values. No tags: any.
    Dataplane {
        mesh: String,
        name: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        tags: BTreeMap<String, Vec<String>>,
    },
    ZoneIngress {
        name: String,
    },
    Zone {
        zone: String,
    },
}

impl Subject {
    pub fn kind(&self) -> TokenKind {
        match self {
            Self::User { .. } => TokenKind::User,
            Self::Dataplane { .. } => TokenKind::Dataplane,
            Self::ZoneIngress { .. } => TokenKind::ZoneIngress,
            Self::Zone { .. } => TokenKind::Zone,
        }
    }
}

/// A verified token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The token's id, by which it can be revoked.
    pub jti: String,
    /// Issued at and expires at, in seconds since the Unix epoch.
    pub iat: u64,
    pub exp: u64,
    #[serde(flatten)]
    pub subject: Subject,
}

/// A token just issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    pub jti: String,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("not a Meridian token: {0}")]
    Malformed(String),
    #[error("this is a {found} token; {expected} needed")]
    WrongKind { found: String, expected: String },
    #[error("signed with key {0:?}, which this control plane does not have: it was not issued here")]
    UnknownKey(String),
    #[error("the signature does not match: the token was not issued by this control plane")]
    BadSignature,
    #[error("the token expired at {0}")]
    Expired(String),
    #[error("the token was revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token's id. No randomness is an error: tokens sharing an id would be revoked together.
fn random_id() -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Internal("no randomness for a token id".into()))?;
    Ok(B64.encode(bytes))
}

/// Public keys by kind and serial.
pub type PublicKeys = HashMap<(TokenKind, u32), Vec<u8>>;

/// The claims of `token` if one of `public` (by kind and serial) signed it as one of
/// `kinds` and it has not expired at `now` (seconds): all of [`Tokens::verify`] but the
/// revocation list, with no store (what the fuzz targets drive).
pub fn verify_offline(
    token: &str,
    kinds: &[TokenKind],
    public: &PublicKeys,
    now: u64,
) -> Result<Claims, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let kid = jwt::key_id(token)?;
    let (kind, serial) = kid
        .split_once('/')
        .and_then(|(k, s)| Some((TokenKind::from_name(k)?, s.parse::<u32>().ok()?)))
        .ok_or_else(|| TokenError::Malformed(format!("unknown key id {kid:?}")))?;
    if !kinds.contains(&kind) {
        let expected: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        return Err(TokenError::WrongKind {
            found: kind.to_string(),
            expected: format!("a {} token is", expected.join(" or ")),
        });
    }
    let key = public
        .get(&(kind, serial))
        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
    let claims = jwt::verify(token, key)?;
    if claims.subject.kind() != kind {
        return Err(TokenError::BadSignature);
    }
    if claims.exp <= now {
        return Err(TokenError::Expired(meridian_model::rfc3339(
            claims.exp.saturating_mul(1000) as i64,
        )));
    }
    Ok(claims)
}

/// A new key (as key 1 of its subject's kind) and a token it signed for `subject`, good
/// until `exp`: the public keys [`verify_offline`] takes, and the token (fuzzing seeds).
pub fn sample_signed(subject: Subject, exp: u64) -> Result<(String, PublicKeys), TokenError> {
    jwt::install();
    let key = StoredKey::generate()?;
    let decode = |text: &str| B64.decode(text).map_err(|e| StoreError::Internal(e.to_string()));
    let private = decode(key.private.as_deref().unwrap_or_default())?;
    let kind = subject.kind();
    let claims = Claims {
        jti: random_id()?,
        iat: 0,
        exp,
        subject,
    };
    let token = jwt::sign(&claims, &format!("{kind}/1"), &private)?;
    Ok((token, HashMap::from([((kind, 1), decode(&key.public)?)])))
}

/// One signing key as the store holds it (`private` only while it signs).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    public: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private: Option<String>,
    created_ms: i64,
}

impl StoredKey {
    fn generate() -> Result<Self, TokenError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| StoreError::Internal("no randomness for a signing key".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| StoreError::Internal("a generated key does not parse".into()))?;
        Ok(Self {
            public: B64.encode(pair.public_key().as_ref()),
            private: Some(B64.encode(pkcs8.as_ref())),
            created_ms: crate::now_ms(),
        })
    }

    fn parse(name: &str, value: &str) -> Result<Self, TokenError> {
        serde_json::from_str(value)
            .map_err(|e| StoreError::Internal(format!("the stored key {name} is damaged: {e}")).into())
    }
}

fn key_name(kind: TokenKind, serial: u32) -> String {
    format!("{KEY_PREFIX}{kind}/{serial}")
}

/// `signing-key/KIND/SERIAL` to its kind and serial.
fn parse_key_name(name: &str) -> Option<(TokenKind, u32)> {
    let (kind, serial) = name.strip_prefix(KEY_PREFIX)?.split_once('/')?;
    Some((TokenKind::from_name(kind)?, serial.parse().ok()?))
}

/// What verifying needs: public keys and the revoked token ids.
#[derive(Default)]
struct Verifying {
    public: PublicKeys,
    revoked: HashSet<String>,
}

/// A key as listed to an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub kind: TokenKind,
    pub serial: u32,
    /// Whether it signs new tokens (the newest of its kind), or only verifies.
    pub signs: bool,
    pub created: String,
}

/// Issues, verifies, revokes and rotates tokens over one store.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn Store>,
    /// What verifying needs, and when it was read.
    cache: Arc<Mutex<Option<Cached>>>,
}

type Cached = (Instant, Arc<Verifying>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Self {
        jwt::install();
        Self {
            store,
            cache: Arc::default(),
        }
    }

    fn forget(&self) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn verifying(&self) -> Result<Arc<Verifying>, TokenError> {
        if let Some((at, v)) = &*self.cache.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < REFRESH
        {
            return Ok(v.clone());
        }
        let mut v = Verifying::default();
        for (name, value) in self.store.secrets(KEY_PREFIX).await? {
            if let Some(id) = parse_key_name(&name) {
                let key = StoredKey::parse(&name, &value)?;
                let public = B64
                    .decode(&key.public)
                    .map_err(|e| StoreError::Internal(format!("the stored key {name}: {e}")))?;
                v.public.insert(id, public);
            }
        }
        for (name, _) in self.store.secrets(REVOKED_PREFIX).await? {
            v.revoked.insert(name[REVOKED_PREFIX.len()..].to_owned());
        }
        let v = Arc::new(v);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// The kind's keys in the store, by serial.
    async fn stored_keys(&self, kind: TokenKind) -> Result<BTreeMap<u32, StoredKey>, TokenError> {
        let mut keys = BTreeMap::new();
        for (name, value) in self.store.secrets(&format!("{KEY_PREFIX}{kind}/")).await? {
            if let Some((_, serial)) = parse_key_name(&name) {
                keys.insert(serial, StoredKey::parse(&name, &value)?);
            }
        }
        Ok(keys)
    }

    /// The key that signs `kind`'s tokens, made now if there is none (the first writer wins,
    /// so replicas starting together agree).
    async fn signing_key(&self, kind: TokenKind) -> Result<(u32, Vec<u8>), TokenError> {
        let keys = self.stored_keys(kind).await?;
        let newest = keys
            .iter()
            .rev()
            .find_map(|(s, k)| k.private.as_ref().map(|p| (*s, p.clone())));
        let (serial, private) = match newest {
            Some(found) => found,
            None => {
                let serial = keys.keys().next_back().map_or(1, |s| s + 1);
                let candidate = serde_json::to_string(&StoredKey::generate()?)
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                let name = key_name(kind, serial);
                let stored = StoredKey::parse(&name, &self.store.secret(&name, &candidate).await?)?;
                self.forget();
                let private = stored
                    .private
                    .ok_or_else(|| StoreError::Internal(format!("the stored key {name} cannot sign")))?;
                (serial, private)
            }
        };
        let private = B64
            .decode(private)
            .map_err(|e| StoreError::Internal(format!("the stored {kind} key: {e}")))?;
        Ok((serial, private))
    }

    /// Makes sure `kind` has a signing key (so that verifying knows it before the first token).
    pub async fn ensure_key(&self, kind: TokenKind) -> Result<(), TokenError> {
        self.signing_key(kind).await.map(drop)
    }

    /// A token for `subject`, good for `valid_for`.
    pub async fn issue(&self, subject: Subject, valid_for: Duration) -> Result<Issued, TokenError> {
        let kind = subject.kind();
        let (serial, private) = self.signing_key(kind).await?;
        let iat = now_secs();
        let claims = Claims {
            jti: random_id()?,
            iat,
            exp: iat.saturating_add(valid_for.as_secs()),
            subject,
        };
        let token = jwt::sign(&claims, &format!("{kind}/{serial}"), &private)?;
        Ok(Issued {
            token,
            jti: claims.jti,
            exp: claims.exp,
        })
    }

    /// The claims of `token` if this control plane issued it as one of `kinds`, and it has
    /// neither expired nor been revoked.
    pub async fn verify(&self, token: &str, kinds: &[TokenKind]) -> Result<Claims, TokenError> {
        let verifying = self.verifying().await?;
        let claims = verify_offline(token, kinds, &verifying.public, now_secs())?;
        if verifying.revoked.contains(&claims.jti) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Revokes the token with id `jti`: from now on (within a second on every replica) it is
    /// refused wherever it is shown.
    pub async fn revoke(&self, jti: &str, exp: Option<u64>) -> Result<(), TokenError> {
        if jti.is_empty()
            || jti.len() > 64
            || !jti
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TokenError::Malformed(format!("{jti:?} is not a token id")));
        }
        self.store
            .put_secret(
                &format!("{REVOKED_PREFIX}{jti}"),
                &exp.map_or_else(|| "unknown".to_owned(), |e| e.to_string()),
            )
            .await?;
        self.forget();
        Ok(())
    }

    /// Makes a new key sign `kind`'s tokens. The previous keys keep only their public half:
    /// the tokens they signed stay good until they expire. Returns the new key's serial.
    pub async fn rotate(&self, kind: TokenKind) -> Result<u32, TokenError> {
        let keys = self.stored_keys(kind).await?;
        let serial = keys.keys().next_back().map_or(1, |s| s + 1);
        let candidate = serde_json::to_string(&StoredKey::generate()?)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        self.store.secret(&key_name(kind, serial), &candidate).await?;
        for (old, mut key) in keys {
            if key.private.take().is_some() {
                let value = serde_json::to_string(&key).map_err(|e| StoreError::Internal(e.to_string()))?;
                self.store.put_secret(&key_name(kind, old), &value).await?;
            }
        }
        self.forget();
        Ok(serial)
    }

    /// Every signing key, for operators (no key material).
    pub async fn keys(&self) -> Result<Vec<KeyInfo>, TokenError> {
        let mut out = Vec::new();
        for kind in TokenKind::ALL {
            for (serial, key) in self.stored_keys(kind).await? {
                out.push(KeyInfo {
                    kind,
                    serial,
                    signs: key.private.is_some(),
                    created: meridian_model::rfc3339(key.created_ms),
                });
            }
        }
        Ok(out)
    }
}

/// JWT framing by `jsonwebtoken`, with Ed25519 from `ring` (the project's one crypto
/// library) as its crypto provider: EdDSA is the only algorithm it knows.
mod jwt {
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{Error, ErrorKind};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

    use super::{Claims, TokenError};

    struct Signer(ring::signature::Ed25519KeyPair);

    impl signature::Signer<Vec<u8>> for Signer {
        fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
            Ok(self.0.sign(msg).as_ref().to_vec())
        }
    }

    impl JwtSigner for Signer {
        fn algorithm(&self) -> Algorithm {
            Algorithm::EdDSA
        }
    }

    struct Verifier(Vec<u8>);

    impl signature::Verifier<Vec<u8>> for Verifier {
        fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
            ring::signature::UnparsedPublicKey::new(&super::ED25519, &self.0)
                .verify(msg, sig)
                .map_err(|_| signature::Error::new())
        }
    }

    impl JwtVerifier for Verifier {
        fn algorithm(&self) -> Algorithm {
            Algorithm::EdDSA
        }
    }

    fn signer(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
        if *alg != Algorithm::EdDSA {
            return Err(Error::from(ErrorKind::InvalidAlgorithm));
        }
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(key.as_bytes())
            .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?;
        Ok(Box::new(Signer(pair)))
    }

    fn verifier(alg: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
        if *alg != Algorithm::EdDSA {
            return Err(Error::from(ErrorKind::InvalidAlgorithm));
        }
        Ok(Box::new(Verifier(key.try_get_as_bytes()?.to_vec())))
    }

    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: signer,
        verifier_factory: verifier,
        key_utils: KeyUtils::new_unimplemented(),
    };

    /// Installs the provider for this process (once; later calls do nothing).
    pub fn install() {
        let _ = PROVIDER.install_default();
    }

    fn malformed(e: Error) -> TokenError {
        TokenError::Malformed(e.to_string())
    }

    pub fn sign(claims: &Claims, kid: &str, pkcs8: &[u8]) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(pkcs8))
            .map_err(|e| meridian_store::StoreError::Internal(format!("signing a token: {e}")).into())
    }

    /// The key id a token names, read before its signature is checked.
    pub fn key_id(token: &str) -> Result<String, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        header
            .kid
            .ok_or_else(|| TokenError::Malformed("no key id (kid)".into()))
    }

    pub fn verify(token: &str, public: &[u8]) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Expiry is checked by the caller, to the second and with a readable message.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(public), &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => malformed(e),
            })
    }
}

#[cfg(test)]
mod tests;
