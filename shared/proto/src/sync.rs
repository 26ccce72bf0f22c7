//! The global-to-zone sync protocol, `meridian.sync.v1`.
//!
//! A zone opens the stream and says `Hello` with the global revision it has applied. Global
//! answers with `Batch`es: every change after that revision, oldest first, then each new
//! commit as it happens. A zone behind global's tombstone horizon gets one batch with
//! `snapshot = true`: the whole set of global resources, replacing what it has. The zone
//! answers every batch with an `Ack` (or a NACK, with a reason) once it is applied. Resources
//! travel as JSON in Meridian's universal form, so the zone validates them with the same model
//! code as any other input.

/// Zone to global.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ZoneMessage {
    #[prost(oneof = "zone_message::Kind", tags = "1, 2")]
    pub kind: Option<zone_message::Kind>,
}

pub mod zone_message {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Ack(super::Ack),
    }
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ChangeType {
    Upsert = 0,
    Delete = 1,
}
