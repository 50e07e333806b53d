-- The revocation log every gateway replicates (LISTEN/NOTIFY plus a catch-up poll).
-- A row is either one token (`jti`) or every token of `user_id` issued before
-- `issued_before` (unix seconds). It matters until `expires_at` (unix seconds) and is pruned
-- after. `created_at` is the database clock at insert time (clock_timestamp(), not the
-- transaction start), which the catch-up cursor is based on.
-- No foreign key to users: a revocation must outlive the user row it names.
CREATE TABLE revocations (
    seq           bigserial   PRIMARY KEY,
    user_id       uuid        NOT NULL,
    jti           text,
    issued_before bigint,
    expires_at    bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT revocations_one_kind CHECK ((jti IS NULL) <> (issued_before IS NULL))
);

-- Catch-up: rows created after a cursor (minus the overlap window).
CREATE INDEX revocations_created_at_idx ON revocations (created_at);
-- Pruning, and the full load (cursor 0) of everything still in force.
CREATE INDEX revocations_expires_at_idx ON revocations (expires_at);
