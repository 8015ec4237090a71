-- 0004: the projections' checkpoints, one row per projection: the version of its
-- code that built its tables, the last ledger position applied, and the
-- generation a rebuild bumps (so every other worker reloads). The projections'
-- code made this table before; a ledger that has it (with or without
-- `generation`, which SQLite cannot add conditionally) keeps its rows, copied
-- into the table below (generations restart at 0: every worker reloads once).
-- Scratch and shadow databases get the same table from the projections
-- (recur_projections::runtime::CHECKPOINTS).
-- Never edit after it lands; add a new file.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name     TEXT   PRIMARY KEY,
    version  BIGINT NOT NULL,
    position BIGINT NOT NULL
);
CREATE TABLE projection_checkpoints_0004 (
    name       TEXT   PRIMARY KEY,
    version    BIGINT NOT NULL,
    position   BIGINT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0
);
INSERT INTO projection_checkpoints_0004 (name, version, position)
    SELECT name, version, position FROM projection_checkpoints;
DROP TABLE projection_checkpoints;
ALTER TABLE projection_checkpoints_0004 RENAME TO projection_checkpoints;
