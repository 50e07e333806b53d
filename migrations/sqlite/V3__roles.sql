-- Roles of a user (CONTRACT section 10): a JSON array of strings, `[]` for none, set by
-- `portcullis users roles`; own tokens carry them as the `roles` claim when not empty.
ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '[]'
    CHECK (json_valid(roles) AND json_type(roles) = 'array');
