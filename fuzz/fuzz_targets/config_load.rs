//! The config loader and validator on arbitrary text, as `check-config` runs it once the file
//! is read. It runs in `fuzz/`, where `tests` links to the repository's `tests/`, so the
//! shipped configs (the seeds) load their fixture keys, and a mutated config can load a real key, a missing one, or a device such as
//! `/dev/zero` or a FIFO (the dictionary offers them).
//!
//! Properties: never panics, never hangs; a refused config names at least one problem, each
//! on one line, none echoing a secret from the environment.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::{self, MapEnv};

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-sec";
const OLD_SECRET: &str = "old-secret-old-secret-old-secret";

static ENV: LazyLock<MapEnv> = LazyLock::new(|| {
    MapEnv(HashMap::from([
        ("BETTER_AUTH_SECRET".to_owned(), SECRET.to_owned()),
        ("OLD_SECRET".to_owned(), OLD_SECRET.to_owned()),
        ("SHORT".to_owned(), "short".to_owned()),
    ]))
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(problems) = fuzzing::parse_config(text, &ENV) {
        assert!(!problems.is_empty(), "refused without a reason");
        for p in &problems {
            assert!(!p.contains(['\n', '\r']), "a problem spans lines: {p:?}");
            assert!(
                !p.contains(SECRET) && !p.contains(OLD_SECRET),
                "secret echoed: {p:?}"
            );
        }
    }
});
