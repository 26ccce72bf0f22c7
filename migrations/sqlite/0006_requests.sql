-- On a zone node: what each recent logged request answered, by the id its client gave it, so
-- that a request sent again (its first answer was lost) is answered again, not applied twice.
-- Written in the same transaction as the entry; forgotten a minute later by the log's clock.
CREATE TABLE meridian_requests (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    reply TEXT NOT NULL
);
CREATE INDEX meridian_requests_at ON meridian_requests (at_ms);
