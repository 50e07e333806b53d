//! The one clock: seconds since the epoch, read by every token check, every minted token and
//! the revocation log. One home, so that a test or a future fake clock changes one place.

/// Seconds since the epoch.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// [`unix_secs`] as the signed seconds the revocation log stores.
pub fn unix_now() -> i64 {
    i64::try_from(unix_secs()).unwrap_or(i64::MAX)
}

/// Milliseconds since the epoch (a token's expiry turned into a timer).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
