-- Roles of a user (CONTRACT section 10): `{}` for none, set by `portcullis users roles`; own
-- tokens carry them as the `roles` claim when not empty. Adding a column with a constant
-- default rewrites no rows (PostgreSQL 11+).
ALTER TABLE users ADD COLUMN roles text[] NOT NULL DEFAULT '{}';
