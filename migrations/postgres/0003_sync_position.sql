-- On a zone: the last global revision applied to this store (the sync resumes from it).
CREATE TABLE meridian_sync_position (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO meridian_sync_position (id, value) VALUES (1, 0);
