//! The token endpoints' part of the OpenAPI documents.

use serde_json::{Map, Value, json};

use super::{Role, errors, json_content, op, schema_ref, text_content, with, write_security};

fn token_op(summary: &str, request: &str) -> Value {
    let responses = with(
        errors(&[400, 401, 403, 408, 413, 415, 503]),
        "200",
        "The token (a JWT)",
        text_content(),
    );
    let mut o = op(summary, "Tokens", write_security(), vec![], responses);
    o["requestBody"] = json!({ "required": true, "content": json_content(schema_ref(request)) });
    o
}

pub(super) fn token_paths(paths: &mut Map<String, Value>, role: Role) {
    paths.insert("/tokens/user".into(), json!({ "post": token_op("A user token: mesh-system:admin may change resources, others read", "UserTokenRequest") }));
    match role {
        Role::Global => {
            paths.insert("/tokens/zone".into(), json!({ "post": token_op("A zone token: what a zone's control plane shows to sync", "ZoneTokenRequest") }));
        }
        Role::Zone => {
            paths.insert("/tokens/dataplane".into(), json!({ "post": token_op("A dataplane token: a sidecar's xDS stream and registration", "DataplaneTokenRequest") }));
            paths.insert(
                "/tokens/zone-ingress".into(),
                json!({ "post": token_op("A zone ingress token", "IngressTokenRequest") }),
            );
        }
    }
    let revoked = with(
        errors(&[400, 401, 403, 408, 413, 415, 503]),
        "200",
        "Revoked",
        json_content(
            json!({"type": "object", "required": ["revoked"], "properties": {"revoked": {"type": "string"}}}),
        ),
    );
    let mut revoke = op(
        "Revoke a token (by the token, or its id)",
        "Tokens",
        write_security(),
        vec![],
        revoked,
    );
    revoke["requestBody"] = json!({ "required": true, "content": json_content(schema_ref("RevokeRequest")) });
    paths.insert("/tokens/revocations".into(), json!({ "post": revoke }));
    let keys = with(
        errors(&[401, 403, 503]),
        "200",
        "Every signing key (no key material)",
        json_content(
            json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": schema_ref("KeyInfo")}}}),
        ),
    );
    let rotated = with(
        errors(&[400, 401, 403, 408, 413, 415, 503]),
        "201",
        "A new key signs this kind's tokens",
        json_content(
            json!({"type": "object", "required": ["kind", "serial"], "properties": {"kind": {"type": "string"}, "serial": {"type": "integer"}}}),
        ),
    );
    let mut rotate = op(
        "Rotate a kind's signing key",
        "Tokens",
        write_security(),
        vec![],
        rotated,
    );
    rotate["requestBody"] = json!({ "required": true, "content": json_content(schema_ref("RotateRequest")) });
    paths.insert(
        "/tokens/signing-keys".into(),
        json!({ "get": op("The signing keys", "Tokens", write_security(), vec![], keys), "post": rotate }),
    );
}
