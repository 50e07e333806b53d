-- Users of the identity endpoints. `email` is stored as registered (trimmed) and is unique
-- case-insensitively (COLLATE NOCASE: ASCII case folding, as SQLite has no Unicode folding
-- built in). Lookups compare with the column's collation, so they use the index.
-- `id` is the hyphenated lowercase UUID; times are unix microseconds, UTC.
CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    email         TEXT    NOT NULL COLLATE NOCASE CHECK (email <> ''),
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX users_email_key ON users (email COLLATE NOCASE);
