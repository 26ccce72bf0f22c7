-- On a zone node: where in the zone's Raft log the state in this database stands, written in
-- the same transaction as each entry it applies ('' before the first).
CREATE TABLE meridian_applied (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value TEXT NOT NULL
);
INSERT INTO meridian_applied (id, value) VALUES (1, '');
