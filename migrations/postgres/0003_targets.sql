-- TARGETS: which targets already hold a row that not every target holds yet, so the next run
-- sends it only to the others. Rows leave this table when the row is marked sent. `doc_id`, the
-- row's document id, tells a row from a later one under the same id (a table reset).
CREATE TABLE IF NOT EXISTS audit_transfer_target_rows (
    source       TEXT        NOT NULL,
    row_id       BIGINT      NOT NULL,
    target       TEXT        NOT NULL,
    doc_id       TEXT        NOT NULL,
    delivered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, row_id, target)
);
-- Each target's share of a run, for `audit-transfer status` (by the run's source and end).
CREATE TABLE IF NOT EXISTS audit_transfer_run_targets (
    source          TEXT        NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL,
    target          TEXT        NOT NULL,
    delivered       BIGINT      NOT NULL,
    already_present BIGINT      NOT NULL,
    rejected        BIGINT      NOT NULL,
    lacking         BIGINT      NOT NULL,
    down            INTEGER     NOT NULL,
    PRIMARY KEY (source, finished_at, target)
);
