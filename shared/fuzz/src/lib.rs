//! Fuzz targets: every parser that reads input from outside, fed bytes, with the properties
//! each must keep whatever it is fed.
//!
//! ```text
//!   seeds (valid inputs) ──mutate──> bytes ──> target ──> no panic, and what parses
//!                                                        round-trips / is what was meant
//!   tests/properties.rs   proptest, a few hundred cases per target in every test run
//!   src/main.rs           `cargo xtask fuzz`: as many as a time budget allows, crashes saved
//! ```
//!
//! A target returns normally for input it refuses; it panics (an assertion) only when a
//! property is broken, which is the bug the fuzzer is after.

#![forbid(unsafe_code)]

use meridian_api::tokens::{PublicKeys, Subject, TokenKind};
use meridian_model::text::{json_values, to_yaml, yaml_values};
use meridian_model::{Format, from_value, parse_documents};
use prost::Message;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    /// Valid inputs to start mutating from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Feeds one input; panics only when a property is broken.
    pub run: fn(&[u8]),
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "resource-yaml",
            seeds: resource_seeds,
            run: |b| resources(b, Format::Yaml),
        },
        Target {
            name: "resource-json",
            seeds: || resource_seeds().into_iter().map(|y| yaml_to_json(&y)).collect(),
            run: |b| resources(b, Format::Json),
        },
        Target {
            name: "yaml-text",
            seeds: resource_seeds,
            run: yaml_round_trip,
        },
        Target {
            name: "sync-message",
            seeds: sync_seeds,
            run: sync_message,
        },
        Target {
            name: "raft-payload",
            seeds: raft_seeds,
            run: raft_payload,
        },
        Target {
            name: "token",
            seeds: || vec![token_fixture().0.into_bytes()],
            run: token,
        },
        Target {
            name: "node-id",
            seeds: || vec![b"default.web-1".to_vec(), b"_ingress.ingress-1".to_vec()],
            run: node_id,
        },
    ]
}

const RESOURCES: &[&str] = &[
    "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: STRICT\n",
    "apiVersion: kuma.io/v1alpha1\nkind: MeshTrace\nmetadata:\n  name: default\nspec:\n  backends:\n  - name: otel\n    type: open_telemetry\n    conf:\n      endpoint: otel-collector.kuma-system.svc:4317\n      headers:\n        x-api-key: <KEY>\n        x-team: {secret: team}\n",
    "apiVersion: kuma.io/v1alpha1\nkind: TrafficPermission\nmetadata:\n  name: allow\nspec:\n  sources:\n  - match:\n      kuma.io/service: demo\n  destinations:\n  - match:\n      kuma.io/service: reg-server\n",
    "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 8080\n    servicePort: 8081\n    tags: {kuma.io/service: web, kuma.io/protocol: http}\n  outbound:\n  - port: 9090\n    tags: {kuma.io/service: db}\n",
    "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: web}\n    default: {connectionTimeout: 2s, idleTimeout: 1h}\n",
    "type: MeshRetry\nname: r\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http: {numRetries: 3, retryOn: [5xx, '503']}\n",
    "type: MeshTrafficPermission\nname: p\nmesh: default\nspec:\n  targetRef: {kind: MeshSubset, tags: {app: web}}\n  from:\n  - targetRef: {kind: MeshService, name: demo}\n    default: {action: Allow}\n",
    "type: Secret\nname: api.key\nmesh: default\ndata: c2VjcmV0\n---\ntype: ZoneIngress\nname: ingress-1\nnetworking: {address: 127.0.0.1, port: 10001}\n",
    "a: &x [1, {b: c}]\nb: *x\nc: |\n  text\nd: 'quoted ''x'''\ne: \"esc\\u00e9\"\n",
];

fn resource_seeds() -> Vec<Vec<u8>> {
    RESOURCES.iter().map(|r| r.as_bytes().to_vec()).collect()
}

fn yaml_to_json(yaml: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(yaml);
    let docs = yaml_values(&text).unwrap_or_default();
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// Resources in either form: a body that parses and validates is, written back in the
/// universal form (as JSON and as YAML), the same resource.
fn resources(bytes: &[u8], format: Format) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(docs) = parse_documents(text, format) else {
        return;
    };
    for doc in docs {
        let Ok(submission) = from_value(doc) else { continue };
        let universal = submission.resource.to_universal();
        let again = from_value(universal.clone()).expect("a valid resource's universal form validates");
        assert_eq!(again.resource, submission.resource, "universal form round trip");
        let yaml = to_yaml(&universal);
        let reread = parse_documents(&yaml, Format::Yaml).expect("written YAML reads back");
        assert_eq!(reread, vec![universal], "YAML round trip of\n{yaml}");
    }
}

/// Any YAML read is written back to the same values.
fn yaml_round_trip(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(values) = yaml_values(text) else { return };
    for value in values {
        let written = to_yaml(&value);
        let reread = yaml_values(&written).expect("written YAML reads back");
        // An empty document (null) is skipped when read.
        if value.is_null() {
            assert!(reread.is_empty());
        } else {
            assert_eq!(reread, vec![value], "YAML round trip of\n{written}");
        }
    }
    let _ = json_values(text);
}

fn sync_seeds() -> Vec<Vec<u8>> {
    use meridian_proto::sync::{
        Ack, Batch, Change, GlobalMessage, Hello, Inventory, ZoneMessage, global_message, zone_message,
    };
    let resource = meridian_model::parse_one(RESOURCES[4], Format::Yaml)
        .expect("seed")
        .resource;
    let hello = ZoneMessage {
        kind: Some(zone_message::Kind::Hello(Hello {
            zone: "zone-1".into(),
            applied_revision: 7,
            version: "0.1.0".into(),
        })),
    };
    let inventory = ZoneMessage {
        kind: Some(zone_message::Kind::Inventory(Inventory {
            full: true,
            changes: vec![Change::upsert(3, &resource), Change::delete(4, &resource.key())],
        })),
    };
    let ack = ZoneMessage {
        kind: Some(zone_message::Kind::Ack(Ack {
            revision: 9,
            error: String::new(),
        })),
    };
    let batch = GlobalMessage {
        kind: Some(global_message::Kind::Batch(Batch {
            from_revision: 1,
            to_revision: 3,
            snapshot: false,
            changes: vec![Change::upsert(3, &resource)],
            secrets: Vec::new(),
        })),
    };
    let mut seeds: Vec<Vec<u8>> = [hello, inventory, ack]
        .iter()
        .map(|m| tagged(0, m.encode_to_vec()))
        .collect();
    seeds.push(tagged(1, batch.encode_to_vec()));
    seeds
}

fn tagged(tag: u8, mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.insert(0, tag);
    bytes
}

/// Sync messages, either way: whatever decodes, each change in it decodes (validated) or is
/// refused with a reason, and a change that decodes names the resource it carries.
fn sync_message(bytes: &[u8]) {
    use meridian_proto::sync::{GlobalMessage, ZoneMessage, global_message, zone_message};
    let Some((&tag, body)) = bytes.split_first() else {
        return;
    };
    let changes = if tag % 2 == 0 {
        match ZoneMessage::decode(body).ok().and_then(|m| m.kind) {
            Some(zone_message::Kind::Inventory(i)) => i.changes,
            _ => return,
        }
    } else {
        match GlobalMessage::decode(body).ok().and_then(|m| m.kind) {
            Some(global_message::Kind::Batch(b)) => b.changes,
            None => return,
        }
    };
    for change in changes {
        if let Ok((key, Some(resource))) = change.decode() {
            assert_eq!(resource.key(), key, "a change carries the resource it names");
        }
    }
}

fn raft_seeds() -> Vec<Vec<u8>> {
    use meridian_store::Write;
    use meridian_zone_cp::raft::ZoneRequest;
    use meridian_zone_cp::raft::leader::{Forward, LeaderCall};
    let submission = meridian_model::parse_one(RESOURCES[4], Format::Yaml).expect("seed");
    let put = ZoneRequest::new(1, &Write::Put(Box::new(submission)));
    let forward = Forward {
        authority: meridian_api::auth::Authority::Token("x.y.z".into()),
        call: LeaderCall::Write(put.clone()),
    };
    let mut seeds = vec![
        tagged(0, serde_json::to_vec(&forward).unwrap_or_default()),
        tagged(1, serde_json::to_vec(&put).unwrap_or_default()),
    ];
    seeds.push(tagged(
        2,
        br#"{"vote":{"leader_id":{"term":3,"node_id":1},"committed":true},"prev_log_id":null,"entries":[],"leader_commit":null}"#.to_vec(),
    ));
    seeds
}

/// What a Raft peer sends: a forwarded call, a logged write, an AppendEntries. Whatever
/// decodes yields a write or a reason, and never a panic.
fn raft_payload(bytes: &[u8]) {
    use meridian_zone_cp::raft::leader::{Forward, LeaderCall};
    use meridian_zone_cp::raft::{TypeConfig, ZoneReply, ZoneRequest};
    let Some((&tag, body)) = bytes.split_first() else {
        return;
    };
    match tag % 4 {
        0 => {
            if let Ok(Forward {
                call: LeaderCall::Write(request),
                ..
            }) = serde_json::from_slice::<Forward>(body)
            {
                let _ = request.to_write();
            }
        }
        1 => {
            if let Ok(request) = serde_json::from_slice::<ZoneRequest>(body) {
                let _ = request.to_write();
            }
        }
        2 => {
            let _ = serde_json::from_slice::<openraft::raft::AppendEntriesRequest<TypeConfig>>(body);
        }
        _ => {
            if let Ok(reply) = serde_json::from_slice::<ZoneReply>(body) {
                let _ = reply.into_written();
            }
        }
    }
}

/// A token and the public keys that verify it, made once per process.
fn token_fixture() -> (String, PublicKeys) {
    static FIXTURE: std::sync::OnceLock<(String, PublicKeys)> = std::sync::OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let subject = Subject::Dataplane {
                mesh: "default".into(),
                name: "web-1".into(),
                tags: [("kuma.io/service".to_owned(), vec!["web".to_owned()])].into(),
            };
            meridian_api::tokens::sample_signed(subject, u64::MAX / 2).expect("a token")
        })
        .clone()
}

/// Tokens: anything that verifies is the token that was signed (no altered token passes).
fn token(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (good, keys) = token_fixture();
    let Ok(claims) = meridian_api::tokens::verify_offline(text, &TokenKind::ALL, &keys, 1) else {
        return;
    };
    let original =
        meridian_api::tokens::verify_offline(&good, &TokenKind::ALL, &keys, 1).expect("the fixture verifies");
    assert_eq!(claims, original, "an altered token verified: {text:?}");
}

/// Node ids: one that parses is short, and reads back as itself.
fn node_id(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Some(id) = meridian_zone_cp::xds::cache::ProxyId::from_node_id(&text) {
        assert!(text.len() <= 127, "a node id of {} bytes", text.len());
        assert_eq!(id.node_id(), text, "node id round trip");
        assert!(!text.chars().any(char::is_control));
    }
}

/// Bytes that often matter to these parsers, spliced in by [`mutate`].
const DICTIONARY: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b": ",
    b"\n- ",
    b"\n  ",
    b"\"",
    b"'",
    b"&a ",
    b"*a",
    b"!!str ",
    b"---\n",
    b"\\u0000",
    b"\x00",
    b"99999999999999999999",
    b"-1",
    b"null",
    b"~",
    b"#",
    b"|\n",
    b".",
    b"kuma.io/service",
    b"\xff",
    b"\t",
    b"\r\n",
];

/// One edit of an input: what it does and where.
#[derive(Clone, Copy, Debug)]
pub struct Edit {
    pub kind: u8,
    pub at: u32,
    pub value: u32,
}

/// Applies `edits` to `seed`: byte flips, insertions, deletions, duplicated ranges, spliced
/// dictionary tokens, truncation.
pub fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let len = out.len();
        let at = if len == 0 { 0 } else { e.at as usize % (len + 1) };
        match e.kind % 7 {
            0 if at < len => out[at] ^= 1 << (e.value % 8),
            1 => out.insert(at, e.value as u8),
            2 if at < len => {
                out.remove(at);
            }
            3 => {
                let end = (at + 1 + e.value as usize % 64).min(len);
                let piece = out[at.min(end)..end].to_vec();
                let repeat = 1 + e.value as usize % 8;
                for _ in 0..repeat {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 | 5 => {
                let token = DICTIONARY[e.value as usize % DICTIONARY.len()];
                out.splice(at..at, token.iter().copied());
            }
            _ => out.truncate(at),
        }
        out.truncate(1 << 16);
    }
    out
}
