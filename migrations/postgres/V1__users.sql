-- Users of the identity endpoints. `email` is stored as registered (trimmed) and is unique
-- case-insensitively: the unique index on lower(email) is what enforces it (never a prior
-- lookup), and lookups use the same expression so they hit the index.
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    email         text        NOT NULL CHECK (email <> ''),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
