-- The trace of the write that made each row (a W3C traceparent, '' when it was not traced):
-- whoever carries the change on (the sync to zones, the push to proxies) continues it, on
-- whichever replica or node reads the change.
ALTER TABLE resources ADD COLUMN trace TEXT NOT NULL DEFAULT '';
ALTER TABLE tombstones ADD COLUMN trace TEXT NOT NULL DEFAULT '';
