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
    let sent = serde_json::from_slice::<Value>(data).ok();
    let sent_password = sent
        .as_ref()
        .and_then(|v| v.get("password")?.as_str().map(str::to_owned));
    // A 422 names an unknown field, and a field may be named like the password.
    let named_field = |pw: &str| {
        sent.as_ref()
            .and_then(Value::as_object)
            .is_some_and(|o| o.keys().any(|k| k.contains(pw)))
    };
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
            // Only a password that no fixed text of a problem can contain proves an echo:
            // 8+ letters and digits, with a digit, an upper- and a lower-case letter.
            if let Some(pw) = sent_password
                .clone()
                .filter(|p| looks_random(p) && !named_field(p))
            {
                let text = String::from_utf8_lossy(&body);
                assert!(!text.contains(pw.as_str()), "password echoed: {text}");
            }
        }
    }
});

fn looks_random(p: &str) -> bool {
    p.len() >= 8
        && p.bytes().all(|b| b.is_ascii_alphanumeric())
        && p.bytes().any(|b| b.is_ascii_digit())
        && p.bytes().any(|b| b.is_ascii_uppercase())
        && p.bytes().any(|b| b.is_ascii_lowercase())
}
