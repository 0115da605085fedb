-- The indexes of indexed and unique entity fields, and how far their builds are. The
-- entity_types projector registers an index when a schema asks for it (status `building`);
-- the indexer builds it in the background and marks it `ready`, or `failed` with the error
-- and retries later. One index on `entities` serves every tenant and type with a field of that
-- name and kind. Coordination state, not a read model: it is not rebuilt from the log.
CREATE TABLE entity_indexes (
    name       TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('building', 'ready', 'failed')),
    error      TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
-- The indexes built before, inside the projector's transaction, are ready.
INSERT INTO entity_indexes (name, definition, status, updated_at)
SELECT name, sql, 'ready', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
FROM sqlite_master
WHERE type = 'index' AND tbl_name = 'entities' AND sql IS NOT NULL
  AND name LIKE 'entities\_%\_idx' ESCAPE '\';
