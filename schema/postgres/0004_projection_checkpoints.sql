-- 0004: the projections' checkpoints, one row per projection: the version of its
-- code that built its tables, the last ledger position applied, and the
-- generation a rebuild bumps (so every other worker reloads). The projections'
-- code made this table before; a ledger that has it (with or without
-- `generation`) keeps its rows. Scratch and shadow databases get the same table
-- from the projections (recur_projections::runtime::CHECKPOINTS).
-- Never edit after it lands; add a new file.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name       TEXT   PRIMARY KEY,
    version    BIGINT NOT NULL,
    position   BIGINT NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0
);
ALTER TABLE projection_checkpoints ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0;
