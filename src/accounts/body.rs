//! Parsing and validating identity request bodies. Malformed JSON is a 400; well-formed JSON
//! with wrong, missing, duplicate or unknown fields is a 422 naming the field. Nothing a client
//! sent (a password above all) is echoed back.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::problem::{Code, Problem};

/// bcrypt reads at most 72 bytes; longer passwords are refused, never truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;
pub const MIN_PASSWORD_BYTES: usize = 8;
const MAX_EMAIL_BYTES: usize = 254;

/// Validated credentials from a register or signin body.
#[derive(Debug)]
pub struct EmailPassword {
    /// Trimmed, as typed (case kept); the store compares case-insensitively.
    pub email: String,
    pub password: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    email: Option<Value>,
    password: Option<Value>,
}

/// The content type must be JSON (parameters such as `charset=utf-8` allowed).
pub fn require_json(content_type: Option<&[u8]>) -> Result<(), Problem> {
    let is_json = content_type.is_some_and(|ct| {
        let essence = ct.split(|&b| b == b';').next().unwrap_or_default();
        essence
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/json")
    });
    if is_json {
        Ok(())
    } else {
        Err(Problem::new(Code::UnsupportedMediaType))
    }
}

pub fn email_password(body: &[u8]) -> Result<EmailPassword, Problem> {
    // Syntax first, so that malformed JSON is told apart from wrong fields. JSON is UTF-8
    // (RFC 8259); serde skims strings it ignores without checking that, so check it here.
    if std::str::from_utf8(body).is_err()
        || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
    {
        return Err(Problem::new(Code::BadRequest).detail("The request body is not valid JSON"));
    }
    // serde would also fill the struct from an array (`["a@b.co","password"]`): the body is an
    // object, nothing else.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(invalid("body", "must be a JSON object"));
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| invalid("body", shape_error(&e)))?;

    let mut errors = BTreeMap::new();
    let email = string_field(&mut errors, "email", raw.email, check_email);
    let password = string_field(&mut errors, "password", raw.password, |p| {
        check_password(p).map(|()| p.as_bytes().to_vec())
    });
    match (email, password) {
        (Some(email), Some(password)) if errors.is_empty() => Ok(EmailPassword { email, password }),
        _ => Err(Problem::new(Code::ValidationFailed).field_errors(errors)),
    }
}

/// A required string field, checked; on failure its reason goes into `errors`.
fn string_field<T>(
    errors: &mut BTreeMap<String, String>,
    name: &str,
    value: Option<Value>,
    check: impl FnOnce(&str) -> Result<T, &'static str>,
) -> Option<T> {
    let why = match value {
        Some(Value::String(s)) => match check(&s) {
            Ok(v) => return Some(v),
            Err(why) => why,
        },
        Some(_) => "must be a string",
        None => "is required",
    };
    errors.insert(name.to_owned(), why.to_owned());
    None
}

fn invalid(field: &str, why: &str) -> Problem {
    let mut errors = BTreeMap::new();
    errors.insert(field.to_owned(), why.to_owned());
    Problem::new(Code::ValidationFailed).field_errors(errors)
}

/// serde's complaint about the object's shape, in fixed words. An unknown member's name is the
/// client's own text (a password typed into a key would come back in serde's message), so it is
/// never quoted; only our two field names are.
fn shape_error(e: &serde_json::Error) -> &'static str {
    let message = e.to_string();
    if message.starts_with("unknown field") {
        "unknown field: only email and password are accepted"
    } else if message.starts_with("duplicate field `email`") {
        "duplicate field `email`"
    } else if message.starts_with("duplicate field `password`") {
        "duplicate field `password`"
    } else if message.starts_with("recursion limit exceeded") {
        "recursion limit exceeded: nested more than 128 levels deep"
    } else {
        "must be an object with email and password"
    }
}

/// Trimmed of ASCII white space only; ASCII only (look-alike Unicode addresses are refused, see
/// README); one `@` with a non-empty local part (≤ 64) and a dotted domain; no spaces or
/// control characters. Unicode white space (NBSP, U+2028, ...) is not trimmed but refused, so
/// no invisible character ever maps onto another account.
fn check_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim_ascii();
    if email.is_empty() {
        return Err("is required");
    }
    if email.len() > MAX_EMAIL_BYTES {
        return Err("is too long");
    }
    if !email.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be an ASCII email address without spaces");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must be an email address");
    };
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if local.is_empty() || local.len() > 64 || !domain_ok {
        return Err("must be an email address");
    }
    Ok(email.to_owned())
}

fn check_password(p: &str) -> Result<(), &'static str> {
    if p.len() < MIN_PASSWORD_BYTES {
        return Err("must be at least 8 bytes");
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err("must be at most 72 bytes (bcrypt's limit)");
    }
    if p.contains('\0') {
        return Err("must not contain NUL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(body: &str) -> serde_json::Value {
        let p = email_password(body.as_bytes()).unwrap_err();
        serde_json::from_slice(&p.body()).unwrap()
    }

    #[test]
    fn good_bodies_are_trimmed_and_kept() {
        let ep =
            email_password(br#"{"email":"  Ada@Example.com ","password":"12345678"}"#).unwrap();
        assert_eq!(ep.email, "Ada@Example.com");
        assert_eq!(ep.password, b"12345678");
    }

    #[test]
    fn malformed_json_is_a_bad_request_and_wrong_fields_are_named() {
        let p = email_password(b"{not json").unwrap_err();
        assert_eq!(p.status(), 400);
        let p =
            email_password(b"{\"email\":\"a\xff@b.co\",\"password\":\"12345678\"}").unwrap_err();
        assert_eq!(p.status(), 400, "invalid UTF-8 is malformed JSON");
        let e = errors(r#"{"email":1,"password":"1234567"}"#);
        assert_eq!(e["status"], 422);
        assert_eq!(e["errors"]["email"], "must be a string");
        assert_eq!(e["errors"]["password"], "must be at least 8 bytes");
        let e = errors(&format!(
            r#"{{"email":"a@b.co","password":"{}"}}"#,
            "x".repeat(73)
        ));
        assert!(e["errors"]["password"].as_str().unwrap().contains("72"));
        let e = errors(r#"{"email":"a@b.co","password":"12345678","admin":true}"#);
        assert!(
            e["errors"]["body"]
                .as_str()
                .unwrap()
                .contains("unknown field")
        );
        for not_an_object in [
            r#"["a@b.co","12345678"]"#,
            r#""a@b.co""#,
            "42",
            "null",
            " [] ",
        ] {
            let e = errors(not_an_object);
            assert_eq!(
                e["errors"]["body"], "must be a JSON object",
                "{not_an_object}"
            );
        }
        let e = errors(r#"{"email":"a@b.co","email":"c@d.co","password":"12345678"}"#);
        assert!(
            e["errors"]["body"]
                .as_str()
                .unwrap()
                .contains("duplicate field")
        );
    }

    #[test]
    fn the_password_is_never_echoed() {
        let body = br#"{"email":"nope","password":"hunter2-secret"}"#;
        let p = email_password(body).unwrap_err();
        assert!(!String::from_utf8_lossy(&p.body()).contains("hunter2"));
    }

    /// Found by the body_parse fuzz target: serde's unknown-field message quoted the member's
    /// name, and a client that typed its password into a key got it back in the 422.
    #[test]
    fn an_unknown_member_is_refused_without_quoting_its_name() {
        let body =
            br#"{"email":"a@b.co","password hunter2Secret9":"","password":"hunter2Secret9"}"#;
        let p = email_password(body).unwrap_err();
        let text = String::from_utf8_lossy(&p.body()).into_owned();
        assert_eq!(p.status(), 422);
        assert!(text.contains("unknown field"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn emails_that_are_not_plain_ascii_addresses_are_refused() {
        for bad in [
            "",
            "a",
            "a@b",
            "@b.co",
            "a@.co",
            "a b@c.co",
            "a@b..co",
            "аdmin@example.com",
            "a@b.co\0",
            "\u{a0}a@b.co",
            "a@b.co\u{2028}",
            "\u{feff}a@b.co",
        ] {
            let ok = check_email(bad);
            assert!(ok.is_err(), "{bad:?}");
        }
        assert!(check_email("a.b+tag@sub.example.co").is_ok());
    }

    #[test]
    fn content_type_must_be_json() {
        assert!(require_json(Some(b"application/json; charset=utf-8")).is_ok());
        assert!(require_json(Some(b"Application/JSON")).is_ok());
        assert_eq!(require_json(Some(b"text/plain")).unwrap_err().status(), 415);
        assert_eq!(require_json(None).unwrap_err().status(), 415);
    }
}
