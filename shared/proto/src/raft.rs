//! Raft between the nodes of one zone, `meridian.raft.v1.ZoneRaft`: openraft's own messages,
//! serialized as JSON, in one envelope per call. `Forward` carries a write from a follower to
//! the leader, and the leader's reply back.

#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftPayload {
    /// JSON of the openraft request or response (or of a forwarded write and its reply).
    #[prost(bytes = "vec", tag = "1")]
    pub json: Vec<u8>,
}
