//! The identity endpoints' body parser (`POST /register`, `/signin`) on arbitrary bytes.
//!
//! Properties: never panics; a refusal is a 400 (not JSON) or a 422 naming fields, whose body
//! never echoes the submitted password; an acceptance holds a trimmed ASCII email and a
//! password of 8 to 72 bytes without NUL, exactly as sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::{self, MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let _ = fuzzing::require_json(Some(data));
    let sent_password = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| v.get("password")?.as_str().map(str::to_owned));
    match fuzzing::parse_credentials(data) {
        Ok(ep) => {
            assert_eq!(ep.email, ep.email.trim());
            assert!(!ep.email.is_empty() && ep.email.len() <= 254);
            assert!(ep.email.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(ep.email.matches('@').count(), 1);
            assert!((MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&ep.password.len()));
            assert!(!ep.password.contains(&0));
            assert_eq!(
                Some(ep.password.as_slice()),
                sent_password.as_deref().map(str::as_bytes)
            );
        }
        Err(problem) => {
            let status = problem.status();
            assert!(status == 400 || status == 422, "status {status}");
            let body = problem.body();
            let json: Value = serde_json::from_slice(&body).expect("problem+json");
            assert_eq!(json["status"], u64::from(status));
            if let Some(pw) = sent_password.filter(|p| p.len() >= 4) {
                let text = String::from_utf8_lossy(&body);
                // The password may coincide with a word of the fixed messages; only a longer
                // one proves an echo.
                let common = ["is required", "must be a string", "bytes", "body"];
                if !common.iter().any(|c| c.contains(pw.as_str())) {
                    assert!(!text.contains(pw.as_str()), "password echoed: {text}");
                }
            }
        }
    }
});
