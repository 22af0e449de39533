-- INTEGRITY_CHAIN: the head of each source's chain (the last link shipped and acknowledged),
-- locked by every page transaction while the chain is on.
CREATE TABLE IF NOT EXISTS audit_transfer_chain (
    source VARCHAR(191) PRIMARY KEY,
    seq    BIGINT       NOT NULL,
    hash   VARCHAR(64)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
-- Links given to a document the destination refused: no document holds them, so checkpoints
-- name them for `verify --chain` to step over.
CREATE TABLE IF NOT EXISTS audit_transfer_chain_voids (
    source VARCHAR(191) NOT NULL,
    seq    BIGINT       NOT NULL,
    prev   VARCHAR(64)  NOT NULL,
    hash   VARCHAR(64)  NOT NULL,
    record VARCHAR(191) NOT NULL,
    PRIMARY KEY (source, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
-- The checkpoints each run wrote to the destination, as written (signed JSON).
CREATE TABLE IF NOT EXISTS audit_transfer_checkpoints (
    source VARCHAR(191) NOT NULL,
    seq    BIGINT       NOT NULL,
    body   TEXT         NOT NULL,
    PRIMARY KEY (source, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
