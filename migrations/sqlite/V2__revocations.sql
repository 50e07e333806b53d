-- The revocation log (same shape as the Postgres one). A row is either one token (`jti`) or
-- every token of `user_id` issued before `issued_before` (unix seconds); it matters until
-- `expires_at` (unix seconds). `created_at` is unix microseconds, taken while the write lock
-- is held, which the catch-up cursor is based on.
-- No foreign key to users: a revocation must outlive the user row it names.
CREATE TABLE revocations (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT    NOT NULL,
    jti           TEXT,
    issued_before INTEGER,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)),
    CHECK ((jti IS NULL) <> (issued_before IS NULL))
) STRICT;

CREATE INDEX revocations_created_at_idx ON revocations (created_at);
CREATE INDEX revocations_expires_at_idx ON revocations (expires_at);
