-- How each run ended, for `audit-transfer status` (last run, last successful run).
-- The index is part of CREATE TABLE: MySQL 8 has no CREATE INDEX IF NOT EXISTS.
CREATE TABLE IF NOT EXISTS audit_transfer_runs (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    source          VARCHAR(191) NOT NULL,
    finished_at     DATETIME(6)  NOT NULL,
    exit_code       INTEGER      NOT NULL,
    selected        BIGINT       NOT NULL,
    delivered       BIGINT       NOT NULL,
    already_present BIGINT       NOT NULL,
    rejected        BIGINT       NOT NULL,
    parked          BIGINT       NOT NULL,
    marked          BIGINT       NOT NULL,
    duration_ms     BIGINT       NOT NULL,
    KEY audit_transfer_runs_source (source, finished_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
