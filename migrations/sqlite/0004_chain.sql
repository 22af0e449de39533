-- INTEGRITY_CHAIN: the head of each source's chain (the last link shipped and acknowledged),
-- locked by every page transaction while the chain is on.
CREATE TABLE IF NOT EXISTS audit_transfer_chain (
    source TEXT    PRIMARY KEY,
    seq    INTEGER      NOT NULL,
    hash   TEXT     NOT NULL
);
-- Links given to a document the destination refused: no document holds them, so checkpoints
-- name them for `verify --chain` to step over.
CREATE TABLE IF NOT EXISTS audit_transfer_chain_voids (
    source TEXT    NOT NULL,
    seq    INTEGER      NOT NULL,
    prev   TEXT     NOT NULL,
    hash   TEXT     NOT NULL,
    record TEXT    NOT NULL,
    PRIMARY KEY (source, seq)
);
-- The checkpoints each run wrote to the destination, as written (signed JSON).
CREATE TABLE IF NOT EXISTS audit_transfer_checkpoints (
    source TEXT    NOT NULL,
    seq    INTEGER      NOT NULL,
    body   TEXT         NOT NULL,
    PRIMARY KEY (source, seq)
);
