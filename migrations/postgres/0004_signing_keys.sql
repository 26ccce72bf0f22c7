-- Keys the control plane signs tokens with (zone tokens, later dataplane tokens). Kept in the
-- store so that every replica verifies the same tokens. Never returned by the API.
CREATE TABLE meridian_signing_keys (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
