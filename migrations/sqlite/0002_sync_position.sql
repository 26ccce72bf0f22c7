-- On a zone: the last global revision applied to this store (the sync resumes from it).
CREATE TABLE meridian_sync_position (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO meridian_sync_position (id, value) VALUES (1, 0);
