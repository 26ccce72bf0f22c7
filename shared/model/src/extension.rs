//! Policy kinds defined outside this crate and registered at start-up.
//!
//! The built-in kinds are listed in [`crate::kind`]; a kind from elsewhere (a test crate's,
//! today) is an [`ExtensionKind`]: its name, plural and decoder. Once registered it is a
//! [`Kind`] like any other: parsed from YAML, validated, stored, served under its plural, and
//! resolved with the same functions as the built-in policies. Its spec travels as
//! [`Extension`], and code that knows the type gets it back with [`Extension::get`].
//!
//! zone-cp registers a kind together with the plugin that applies it
//! (`xds::policies::register`), so no kind reaches a proxy without both halves.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::targetref::TargetRef;
use crate::validate::{Validate, Validator};
use crate::{FieldError, Kind};

/// What a registered kind's spec type provides: what [`crate::Spec`] does for built-in ones.
pub trait ExtensionSpec: Any + fmt::Debug + Send + Sync {
    fn to_value(&self) -> Value;
    fn validate(&self, v: &mut Validator);
    /// The top-level `targetRef` (`None` stands for `Mesh`), to find the proxies it affects.
    fn target_ref(&self) -> Option<&TargetRef>;
    fn as_any(&self) -> &dyn Any;
}

/// A spec type that can be an [`ExtensionSpec`]: serde, validation and a top-level targetRef.
pub trait ExtensionType:
    Serialize + DeserializeOwned + Validate + fmt::Debug + Send + Sync + 'static
{
    fn top_target_ref(&self) -> Option<&TargetRef>;
}

impl<T: ExtensionType> ExtensionSpec for T {
    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn validate(&self, v: &mut Validator) {
        Validate::validate(self, v);
    }

    fn target_ref(&self) -> Option<&TargetRef> {
        self.top_target_ref()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Decodes a spec, naming the field that is wrong.
type Decoder = fn(&str, Value) -> Result<Arc<dyn ExtensionSpec>, FieldError>;

/// A policy kind from outside this crate. Mesh-scoped, with its spec nested under `spec`.
pub struct ExtensionKind {
    pub name: &'static str,
    pub plural: &'static str,
    decode: Decoder,
}

impl ExtensionKind {
    /// The kind `name` (served under `plural`) whose spec is `S`.
    pub const fn new<S: ExtensionType>(name: &'static str, plural: &'static str) -> Self {
        ExtensionKind {
            name,
            plural,
            decode: decode_as::<S>,
        }
    }

    pub(crate) fn decode(&'static self, root: &str, value: Value) -> Result<Extension, FieldError> {
        Ok(Extension {
            kind: self,
            spec: (self.decode)(root, value)?,
        })
    }
}

fn decode_as<S: ExtensionType>(root: &str, value: Value) -> Result<Arc<dyn ExtensionSpec>, FieldError> {
    Ok(Arc::new(crate::kind::decode::<S>(root, value)?))
}

// Kinds are identified by name: two registrations of one name are refused.
impl PartialEq for ExtensionKind {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for ExtensionKind {}
impl PartialOrd for ExtensionKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ExtensionKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(other.name)
    }
}
impl std::hash::Hash for ExtensionKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}
impl fmt::Debug for ExtensionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A registered kind's spec.
#[derive(Clone, Debug)]
pub struct Extension {
    pub kind: &'static ExtensionKind,
    pub spec: Arc<dyn ExtensionSpec>,
}

impl Extension {
    /// The spec as its own type; `None` when it is another kind's.
    pub fn get<S: 'static>(&self) -> Option<&S> {
        self.spec.as_any().downcast_ref()
    }
}

impl PartialEq for Extension {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.spec.to_value() == other.spec.to_value()
    }
}

static REGISTERED: RwLock<Vec<&'static ExtensionKind>> = RwLock::new(Vec::new());

/// Why a kind could not be registered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("a kind named {0} or served under {1} is already known")]
    Taken(&'static str, &'static str),
}

/// Makes `kind` known to every parser, validator and store in this process.
pub fn register(kind: &'static ExtensionKind) -> Result<(), RegisterError> {
    let taken = |k: Kind| k.name() == kind.name || k.plural() == kind.plural;
    let mut registered = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    if Kind::ALL.iter().copied().any(taken) || registered.iter().any(|k| taken(Kind::Extension(k))) {
        return Err(RegisterError::Taken(kind.name, kind.plural));
    }
    registered.push(kind);
    Ok(())
}

/// The registered kinds, in the order they were registered.
pub fn registered() -> Vec<Kind> {
    let registered = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    registered.iter().map(|k| Kind::Extension(k)).collect()
}
