-- Every write takes the next value of this counter inside its transaction. The row lock makes
-- writers commit in revision order, so a reader that has seen revision N has seen every write
-- numbered below N (a sequence would not promise that: numbers can commit out of order).
CREATE TABLE meridian_revision (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO meridian_revision (id, value) VALUES (1, 0);

-- Global-scoped kinds (Mesh) have mesh = ''.
CREATE TABLE resources (
    kind TEXT NOT NULL,
    mesh TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    labels TEXT NOT NULL,
    spec TEXT NOT NULL,
    creation_time BIGINT NOT NULL,
    modification_time BIGINT NOT NULL,
    PRIMARY KEY (kind, mesh, name)
);
CREATE UNIQUE INDEX resources_revision ON resources (revision);
CREATE INDEX resources_mesh ON resources (mesh);

-- The last delete of each key, for readers that resume from a revision.
CREATE TABLE tombstones (
    kind TEXT NOT NULL,
    mesh TEXT NOT NULL,
    name TEXT NOT NULL,
    revision BIGINT NOT NULL,
    deleted_at BIGINT NOT NULL,
    PRIMARY KEY (kind, mesh, name)
);
CREATE UNIQUE INDEX tombstones_revision ON tombstones (revision);

-- Tombstones at or below the horizon have been compacted away: a reader older than it needs
-- a full snapshot.
CREATE TABLE meridian_tombstone_horizon (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO meridian_tombstone_horizon (id, value) VALUES (1, 0);
