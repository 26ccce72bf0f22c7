//! The global-to-zone sync protocol, `meridian.sync.v1`.
//!
//! A zone opens the stream and says `Hello` with the global revision it has applied. Global
//! answers with `Batch`es: every change after that revision, oldest first, then each new
//! commit as it happens. A zone behind global's tombstone horizon gets one batch with
//! `snapshot = true`: the whole set of global resources, replacing what it has. The zone
//! answers every batch with an `Ack` (or a NACK, with a reason) once it is applied.
//!
//! Upstream, the zone sends its `Inventory` (its own Dataplanes and ZoneIngresses): all of it
//! after `Hello`, then each change. Global stores each item as `ZONE.NAME`, labelled
//! `kuma.io/zone: ZONE`, and relays it to the other zones in their batches.
//!
//! Resources travel as JSON in Meridian's universal form, so the receiver validates them with
//! the same model code as any other input.

use meridian_model::{Kind, Resource, ResourceKey, Submission, from_value};

/// Zone to global.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ZoneMessage {
    #[prost(oneof = "zone_message::Kind", tags = "1, 2, 3")]
    pub kind: Option<zone_message::Kind>,
}

pub mod zone_message {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Ack(super::Ack),
        #[prost(message, tag = "3")]
        Inventory(super::Inventory),
    }
}

/// The zone's own resources: every one of them when `full` (whatever global holds from the
/// zone beyond these goes), or the ones that changed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Inventory {
    #[prost(bool, tag = "1")]
    pub full: bool,
    /// Named as the zone names them (no `ZONE.` prefix); `revision` is the zone's own.
    #[prost(message, repeated, tag = "2")]
    pub changes: Vec<Change>,
}

/// The first message of a stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(string, tag = "1")]
    pub zone: String,
    /// The last global revision the zone has applied (0: nothing yet).
    #[prost(int64, tag = "2")]
    pub applied_revision: i64,
    #[prost(string, tag = "3")]
    pub version: String,
}

/// A batch applied (or refused, when `error` is set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// The batch's `to_revision`.
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// Empty for an ACK; the reason for a NACK.
    #[prost(string, tag = "2")]
    pub error: String,
}

/// Global to zone.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GlobalMessage {
    #[prost(oneof = "global_message::Kind", tags = "1")]
    pub kind: Option<global_message::Kind>,
}

pub mod global_message {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Batch(super::Batch),
    }
}

/// Changes between two revisions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Batch {
    /// The revision the zone had; the changes come after it.
    #[prost(int64, tag = "1")]
    pub from_revision: i64,
    /// The revision the zone has once this batch is applied.
    #[prost(int64, tag = "2")]
    pub to_revision: i64,
    /// The batch holds every global resource: whatever else the zone has from global goes.
    #[prost(bool, tag = "3")]
    pub snapshot: bool,
    #[prost(message, repeated, tag = "4")]
    pub changes: Vec<Change>,
    /// Mesh CAs (`mesh-ca/MESH/BACKEND`) for the meshes in this batch, so every zone issues
    /// certificates from the same roots. Applied before the changes.
    #[prost(message, repeated, tag = "5")]
    pub secrets: Vec<Secret>,
}

/// A named secret, as the store holds it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Secret {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Change {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// `Upsert` carries `resource`; `Delete` names the resource by kind, mesh and name.
    #[prost(enumeration = "ChangeType", tag = "2")]
    pub change_type: i32,
    #[prost(string, tag = "3")]
    pub kind: String,
    #[prost(string, tag = "4")]
    pub mesh: String,
    #[prost(string, tag = "5")]
    pub name: String,
    /// The resource in the universal form, as JSON (upserts only).
    #[prost(string, tag = "6")]
    pub resource: String,
    /// W3C trace context of the write, when the sender traces it: the receiver's spans join
    /// the write's trace.
    #[prost(string, tag = "7")]
    pub traceparent: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ChangeType {
    Upsert = 0,
    Delete = 1,
}

impl Change {
    pub fn upsert(revision: i64, resource: &Resource) -> Self {
        let key = resource.key();
        Self {
            revision,
            change_type: ChangeType::Upsert as i32,
            kind: key.kind.name().to_owned(),
            mesh: key.mesh,
            name: key.name,
            resource: resource.to_universal().to_string(),
            traceparent: String::new(),
        }
    }

    pub fn delete(revision: i64, key: &ResourceKey) -> Self {
        Self {
            revision,
            change_type: ChangeType::Delete as i32,
            kind: key.kind.name().to_owned(),
            mesh: key.mesh.clone(),
            name: key.name.clone(),
            resource: String::new(),
            traceparent: String::new(),
        }
    }

    /// The key, and for an upsert the resource, validated as any input is. The error says
    /// which change is at fault and why.
    pub fn decode(&self) -> Result<(ResourceKey, Option<Resource>), BadChange> {
        let at = |problem: String| BadChange {
            revision: self.revision,
            kind: self.kind.clone(),
            name: self.name.clone(),
            problem,
        };
        let kind = Kind::from_name(&self.kind).ok_or_else(|| at("unknown kind".into()))?;
        let key = ResourceKey::new(kind, self.mesh.clone(), self.name.clone());
        match ChangeType::try_from(self.change_type) {
            Ok(ChangeType::Delete) => Ok((key, None)),
            Ok(ChangeType::Upsert) => {
                let mut values =
                    meridian_model::text::json_values(&self.resource).map_err(|e| at(e.message))?;
                if values.len() != 1 {
                    return Err(at("expected one resource as JSON".into()));
                }
                let value = values.remove(0);
                let Submission { resource, .. } = from_value(value).map_err(|e| at(e.to_string()))?;
                if resource.key() != key {
                    return Err(at(format!("the resource is {}", resource.key())));
                }
                Ok((key, Some(resource)))
            }
            Err(_) => Err(at(format!("unknown change type {}", self.change_type))),
        }
    }
}

/// A change that cannot be applied: which one, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("change {revision} ({kind} {name:?}): {problem}")]
pub struct BadChange {
    pub revision: i64,
    pub kind: String,
    pub name: String,
    pub problem: String,
}

#[cfg(test)]
mod tests {
    use meridian_model::{Format, parse_one};

    use super::*;

    #[test]
    fn changes_round_trip_and_refuse_what_does_not_validate() {
        let r = parse_one("type: Mesh\nname: demo\n", Format::Yaml)
            .expect("valid")
            .resource;
        assert_eq!(Change::upsert(3, &r).decode(), Ok((r.key(), Some(r.clone()))));
        assert_eq!(Change::delete(4, &r.key()).decode(), Ok((r.key(), None)));
        let mut bad = Change::upsert(5, &r);
        bad.name = "other".into();
        let err = |c: &Change| c.decode().map_err(|e| e.to_string());
        assert_eq!(
            err(&bad),
            Err("change 5 (Mesh \"other\"): the resource is Mesh \"demo\"".into())
        );
        bad.kind = "Nope".into();
        assert!(err(&bad).is_err_and(|e| e.contains("unknown kind")));
        let mut bad = Change::upsert(6, &r);
        bad.resource = r#"{"type":"Mesh","name":"demo","bogus":1}"#.into();
        assert!(
            err(&bad).is_err_and(|e| e.contains("bogus")),
            "{:?}",
            bad.decode()
        );
    }
}
