//! What a zone's Raft log carries (`ZoneRequest`) and what applying it answered (`ZoneReply`),
//! in a serializable form: the log is stored and replicated as JSON, and a follower forwards
//! writes to the leader and gets the reply back. Resources travel in the universal form and
//! are validated again when applied, like any other input.

use meridian_model::{Kind, ResourceKey, SpanContext, Stored, Submission, from_value};
use meridian_store::{
    DeleteOptions, PutOutcome, Sensitive, StoreError, SyncedOp, SyncedOutcome, Write, Written,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One write, stamped with the time the node that took it accepted it, and with an id that
/// stays the same when it is sent again: applying it twice answers twice and writes once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneRequest {
    pub at_ms: i64,
    /// Absent in entries logged before requests had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub write: WireWrite,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum WireWrite {
    Put {
        resource: Value,
        expected_version: Option<i64>,
        /// The write's trace, as a `traceparent` (absent when untraced, and in older entries).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    Delete {
        kind: String,
        mesh: String,
        name: String,
        cascade: bool,
        expected_version: Option<i64>,
        /// The write's trace, as a `traceparent` (absent when untraced, and in older entries).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    Synced {
        ops: Vec<WireSyncedOp>,
        position: Option<i64>,
    },
    Status {
        name: String,
        value: String,
    },
    Secret {
        name: String,
        candidate: Sensitive,
        #[serde(default)]
        replace: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum WireSyncedOp {
    Put {
        resource: Value,
        /// The write's trace, as a `traceparent` (absent when untraced, and in older entries).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    Delete {
        kind: String,
        mesh: String,
        name: String,
        /// The write's trace, as a `traceparent` (absent when untraced, and in older entries).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
}

fn resource_value(s: &Submission) -> Value {
    s.resource.to_universal()
}

/// Why a logged write no longer decodes (it was valid when written: the kinds or their
/// validation changed since). Every node refuses it alike.
#[derive(Debug, thiserror::Error)]
pub enum BadWrite {
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error(transparent)]
    Resource(#[from] meridian_model::ResourceError),
}

fn key_of(kind: &str, mesh: &str, name: &str) -> Result<ResourceKey, BadWrite> {
    let kind = Kind::from_name(kind).ok_or_else(|| BadWrite::UnknownKind(kind.to_owned()))?;
    Ok(ResourceKey::new(kind, mesh, name))
}

fn submission(
    resource: &Value,
    expected_version: Option<i64>,
    trace: &Option<String>,
) -> Result<Submission, BadWrite> {
    let mut s = from_value(resource.clone())?;
    s.expected_version = expected_version;
    s.trace = parse_trace(trace);
    Ok(s)
}

fn wire_trace(trace: Option<SpanContext>) -> Option<String> {
    trace.map(|t| t.traceparent())
}

/// A malformed trace is dropped, never refused: it only ever decides which spans are drawn.
fn parse_trace(trace: &Option<String>) -> Option<SpanContext> {
    trace.as_deref().and_then(SpanContext::parse)
}

/// 128 random bits, in hex: unique among the zone's requests without any coordination.
/// Without randomness a request has none, and is applied as often as it arrives.
fn request_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    let random = rustls::crypto::ring::default_provider().secure_random;
    random.fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl ZoneRequest {
    pub fn new(at_ms: i64, write: &Write) -> Self {
        let write = match write {
            Write::Put(s) => WireWrite::Put {
                resource: resource_value(s),
                expected_version: s.expected_version,
                trace: wire_trace(s.trace),
            },
            Write::Delete(key, options) => WireWrite::Delete {
                kind: key.kind.name().to_owned(),
                mesh: key.mesh.clone(),
                name: key.name.clone(),
                cascade: options.cascade,
                expected_version: options.expected_version,
                trace: wire_trace(options.trace),
            },
            Write::Synced(ops, position) => WireWrite::Synced {
                ops: ops
                    .iter()
                    .map(|op| match op {
                        SyncedOp::Put(s) => WireSyncedOp::Put {
                            resource: resource_value(s),
                            trace: wire_trace(s.trace),
                        },
                        SyncedOp::Delete { key, trace } => WireSyncedOp::Delete {
                            kind: key.kind.name().to_owned(),
                            mesh: key.mesh.clone(),
                            name: key.name.clone(),
                            trace: wire_trace(*trace),
                        },
                    })
                    .collect(),
                position: *position,
            },
            Write::Status { name, value } => WireWrite::Status {
                name: name.clone(),
                value: value.clone(),
            },
            Write::Secret {
                name,
                candidate,
                replace,
            } => WireWrite::Secret {
                name: name.clone(),
                candidate: candidate.clone(),
                replace: *replace,
            },
        };
        Self {
            at_ms,
            id: request_id(),
            write,
        }
    }

    /// The write, validated again.
    pub fn to_write(&self) -> Result<Write, BadWrite> {
        Ok(match &self.write {
            WireWrite::Put {
                resource,
                expected_version,
                trace,
            } => Write::Put(Box::new(submission(resource, *expected_version, trace)?)),
            WireWrite::Delete {
                kind,
                mesh,
                name,
                cascade,
                expected_version,
                trace,
            } => Write::Delete(
                key_of(kind, mesh, name)?,
                DeleteOptions {
                    cascade: *cascade,
                    expected_version: *expected_version,
                    trace: parse_trace(trace),
                },
            ),
            WireWrite::Synced { ops, position } => Write::Synced(
                ops.iter()
                    .map(|op| match op {
                        WireSyncedOp::Put { resource, trace } => {
                            submission(resource, None, trace).map(|s| SyncedOp::Put(Box::new(s)))
                        }
                        WireSyncedOp::Delete {
                            kind,
                            mesh,
                            name,
                            trace,
                        } => key_of(kind, mesh, name).map(|key| SyncedOp::Delete {
                            key,
                            trace: parse_trace(trace),
                        }),
                    })
                    .collect::<Result<_, _>>()?,
                *position,
            ),
            WireWrite::Status { name, value } => Write::Status {
                name: name.clone(),
                value: value.clone(),
            },
            WireWrite::Secret {
                name,
                candidate,
                replace,
            } => Write::Secret {
                name: name.clone(),
                candidate: candidate.clone(),
                replace: *replace,
            },
        })
    }
}

/// What applying a request answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneReply(pub Result<WireWritten, WireError>);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum WireWritten {
    Nothing,
    Put {
        outcome: String,
        stored: WireStored,
    },
    Deleted {
        revision: i64,
    },
    Synced {
        written: usize,
        unchanged: usize,
        deleted: usize,
    },
    Status,
    Secret {
        value: Sensitive,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireStored {
    pub resource: Value,
    pub version: i64,
    pub revision: i64,
    pub creation_time_ms: i64,
    pub modification_time_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireError {
    pub kind: String,
    pub message: String,
}

impl From<&StoreError> for WireError {
    fn from(e: &StoreError) -> Self {
        let kind = match e {
            StoreError::NotFound(_) => "NotFound",
            StoreError::Forbidden(_) => "Forbidden",
            StoreError::Conflict(_) => "Conflict",
            StoreError::Unavailable(_) => "Unavailable",
            StoreError::TooOld { .. } => "TooOld",
            StoreError::Internal(_) => "Internal",
        };
        let message = match e {
            StoreError::NotFound(m)
            | StoreError::Forbidden(m)
            | StoreError::Conflict(m)
            | StoreError::Unavailable(m)
            | StoreError::Internal(m) => m.clone(),
            other => other.to_string(),
        };
        Self {
            kind: kind.to_owned(),
            message,
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> Self {
        match e.kind.as_str() {
            "NotFound" => StoreError::NotFound(e.message),
            "Forbidden" => StoreError::Forbidden(e.message),
            "Conflict" => StoreError::Conflict(e.message),
            "Unavailable" => StoreError::Unavailable(e.message),
            _ => StoreError::Internal(e.message),
        }
    }
}

/// `with_resource: false` leaves the resource out (as `null`), for a record whose reader has
/// it already.
fn wire_stored(s: &Stored, with_resource: bool) -> WireStored {
    WireStored {
        resource: if with_resource {
            s.resource.to_universal()
        } else {
            Value::Null
        },
        version: s.version,
        revision: s.revision,
        creation_time_ms: s.creation_time_ms,
        modification_time_ms: s.modification_time_ms,
    }
}

impl ZoneReply {
    pub fn new(outcome: &Result<Written, StoreError>) -> Self {
        Self::of(outcome, true)
    }

    fn of(outcome: &Result<Written, StoreError>, with_resource: bool) -> Self {
        Self(match outcome {
            Err(e) => Err(e.into()),
            Ok(written) => Ok(match written {
                Written::Nothing => WireWritten::Nothing,
                Written::Put(outcome) => WireWritten::Put {
                    outcome: outcome.word().to_owned(),
                    stored: wire_stored(outcome.stored(), with_resource),
                },
                Written::Deleted(revision) => WireWritten::Deleted { revision: *revision },
                Written::Synced(s) => WireWritten::Synced {
                    written: s.written,
                    unchanged: s.unchanged,
                    deleted: s.deleted,
                },
                Written::Status => WireWritten::Status,
                Written::Secret(value) => WireWritten::Secret { value: value.clone() },
            }),
        })
    }

    /// The reply as the state machine records it for retries of its request: a put's resource
    /// is left out, since the retry carries the same one.
    pub fn recorded(outcome: &Result<Written, StoreError>) -> String {
        serde_json::to_string(&Self::of(outcome, false)).unwrap_or_default()
    }

    /// A reply recorded by [`ZoneReply::recorded`], answered again to a retry of `request`.
    pub fn repeated(recorded: &str, request: &ZoneRequest) -> Self {
        let Ok(mut reply) = serde_json::from_str::<Self>(recorded) else {
            return Self(Err(WireError {
                kind: "Internal".into(),
                message: "the recorded answer to a repeated request does not decode".into(),
            }));
        };
        if let (Ok(WireWritten::Put { stored, .. }), WireWrite::Put { resource, .. }) =
            (&mut reply.0, &request.write)
        {
            stored.resource = resource.clone();
        }
        reply
    }

    /// A request that no longer decodes (it was valid when written): every node refuses it.
    pub fn invalid(why: &BadWrite) -> Self {
        Self(Err(WireError {
            kind: "Internal".into(),
            message: format!("a logged write no longer decodes: {why}"),
        }))
    }

    /// Back to the store's terms.
    pub fn into_written(self) -> Result<Written, StoreError> {
        let written = self.0?;
        Ok(match written {
            WireWritten::Nothing => Written::Nothing,
            WireWritten::Put { outcome, stored } => {
                let resource = from_value(stored.resource)
                    .map_err(|e| StoreError::Internal(format!("a reply's resource: {e}")))?
                    .resource;
                let stored = Stored {
                    resource,
                    version: stored.version,
                    revision: stored.revision,
                    creation_time_ms: stored.creation_time_ms,
                    modification_time_ms: stored.modification_time_ms,
                    // The writer knows the trace it wrote with; the reply leaves it out.
                    trace: None,
                };
                Written::Put(Box::new(match outcome.as_str() {
                    "created" => PutOutcome::Created(stored),
                    "updated" => PutOutcome::Updated(stored),
                    _ => PutOutcome::Unchanged(stored),
                }))
            }
            WireWritten::Deleted { revision } => Written::Deleted(revision),
            WireWritten::Synced {
                written,
                unchanged,
                deleted,
            } => Written::Synced(SyncedOutcome {
                written,
                unchanged,
                deleted,
            }),
            WireWritten::Status => Written::Status,
            WireWritten::Secret { value } => Written::Secret(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_travel_as_text_and_never_show_in_debug_output() {
        let write = Write::Secret {
            name: "mesh-ca/default/ca-1".into(),
            candidate: Sensitive("THE-KEY".into()),
            replace: true,
        };
        let request = ZoneRequest::new(7, &write);
        assert!(!format!("{request:?}{write:?}").contains("THE-KEY"));
        let json = serde_json::to_string(&request).expect("json");
        assert!(json.contains("\"candidate\":\"THE-KEY\""), "{json}");
        let back: ZoneRequest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.to_write().expect("write"), write);
        let reply = ZoneReply::new(&Ok(Written::Secret(Sensitive("THE-KEY".into()))));
        assert!(!format!("{reply:?}").contains("THE-KEY"));
    }

    #[test]
    fn writes_carry_their_trace_through_the_log() {
        let trace = SpanContext {
            trace_id: [7; 16],
            span_id: [9; 8],
        };
        let mut put = meridian_model::parse_one("type: Mesh\nname: traced\n", meridian_model::Format::Yaml)
            .expect("mesh");
        put.trace = Some(trace);
        let key = put.resource.key();
        let writes = [
            Write::Put(Box::new(put.clone())),
            Write::Delete(
                key.clone(),
                DeleteOptions {
                    trace: Some(trace),
                    ..DeleteOptions::default()
                },
            ),
            Write::Synced(
                vec![
                    SyncedOp::Put(Box::new(put)),
                    SyncedOp::Delete {
                        key,
                        trace: Some(trace),
                    },
                ],
                Some(3),
            ),
        ];
        for write in writes {
            let json = serde_json::to_string(&ZoneRequest::new(7, &write)).expect("json");
            let back: ZoneRequest = serde_json::from_str(&json).expect("parse");
            assert_eq!(back.to_write().expect("write"), write, "{json}");
        }
        // An entry logged before writes had traces, or with one that does not parse, still
        // applies, untraced.
        for json in [
            r#"{"atMs":1,"write":{"op":"delete","kind":"Mesh","mesh":"","name":"m","cascade":false,"expectedVersion":null}}"#,
            r#"{"atMs":1,"write":{"op":"delete","kind":"Mesh","mesh":"","name":"m","cascade":false,"expectedVersion":null,"trace":"junk"}}"#,
        ] {
            let request: ZoneRequest = serde_json::from_str(json).expect("parse");
            let Ok(Write::Delete(_, options)) = request.to_write() else {
                panic!("{json}");
            };
            assert_eq!(options.trace, None);
        }
    }
}
