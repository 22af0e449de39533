-- Rows that could not be delivered: kept so they neither block the queue nor get lost.
CREATE TABLE IF NOT EXISTS audit_transfer_failed_rows (
    source          TEXT        NOT NULL,
    row_id          BIGINT      NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 1,
    last_error      TEXT        NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_failed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, row_id)
);
