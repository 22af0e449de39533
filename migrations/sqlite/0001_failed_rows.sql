-- Rows that could not be delivered: kept so they neither block the queue nor get lost.
CREATE TABLE IF NOT EXISTS audit_transfer_failed_rows (
    source          TEXT    NOT NULL,
    row_id          INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 1,
    last_error      TEXT    NOT NULL,
    first_failed_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_failed_at  TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (source, row_id)
);
