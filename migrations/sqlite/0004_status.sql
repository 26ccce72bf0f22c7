-- Runtime status that is not a resource: no revision, last writer wins (for example each
-- global replica's view of a zone's sync, merged by GET /zones).
CREATE TABLE meridian_status (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
