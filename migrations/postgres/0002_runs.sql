-- How each run ended, for `audit-transfer status` (last run, last successful run).
CREATE TABLE IF NOT EXISTS audit_transfer_runs (
    id              BIGSERIAL   PRIMARY KEY,
    source          TEXT        NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL,
    exit_code       INTEGER     NOT NULL,
    selected        BIGINT      NOT NULL,
    delivered       BIGINT      NOT NULL,
    already_present BIGINT      NOT NULL,
    rejected        BIGINT      NOT NULL,
    parked          BIGINT      NOT NULL,
    marked          BIGINT      NOT NULL,
    duration_ms     BIGINT      NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_transfer_runs_source ON audit_transfer_runs (source, finished_at);
