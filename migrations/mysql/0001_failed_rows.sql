-- Rows that could not be delivered: kept so they neither block the queue nor get lost.
CREATE TABLE IF NOT EXISTS audit_transfer_failed_rows (
    source          VARCHAR(191) NOT NULL,
    row_id          BIGINT       NOT NULL,
    attempts        INTEGER      NOT NULL DEFAULT 1,
    last_error      TEXT         NOT NULL,
    first_failed_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_failed_at  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (source, row_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
