-- Rate-limited attempts counted for every replica (`rate_limit.scope = "cluster"`, CONTRACT 14):
-- one row per key and minute. The key is a SHA-256 of `ip:<address>` or `email:<address>`,
-- never the address itself; `window_start` is unix seconds (a multiple of 60). Rows older than
-- the window before are deleted by the store upkeep. UNLOGGED: counters that a crash may lose
-- are worth no WAL (every write is one upsert at sign-in rate).
CREATE UNLOGGED TABLE attempts (
    key          bytea   NOT NULL,
    window_start bigint  NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (key, window_start)
);

CREATE INDEX attempts_window_start_idx ON attempts (window_start);
