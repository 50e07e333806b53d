-- Rate-limited attempts (same shape as the Postgres table). With SQLite the store is one
-- process's own, so `rate_limit.scope = "cluster"` counts per replica; the table keeps the two
-- stores alike for the store contract.
CREATE TABLE attempts (
    key          BLOB    NOT NULL,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (key, window_start)
) STRICT;

CREATE INDEX attempts_window_start_idx ON attempts (window_start);
