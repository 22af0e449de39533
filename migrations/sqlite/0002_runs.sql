-- How each run ended, for `audit-transfer status` (last run, last successful run).
CREATE TABLE IF NOT EXISTS audit_transfer_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source          TEXT    NOT NULL,
    finished_at     TEXT    NOT NULL,
    exit_code       INTEGER NOT NULL,
    selected        INTEGER NOT NULL,
    delivered       INTEGER NOT NULL,
    already_present INTEGER NOT NULL,
    rejected        INTEGER NOT NULL,
    parked          INTEGER NOT NULL,
    marked          INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_transfer_runs_source ON audit_transfer_runs (source, finished_at);
