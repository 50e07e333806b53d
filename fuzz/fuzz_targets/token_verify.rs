//! Token verification against every algorithm's key set, with `jsonwebtoken` as the oracle.
//!
//! Input: one mode byte, then either
//! - even mode: the rest is a token, verified against the HS256, EdDSA (with a retired key),
//!   ES256 and RS256 key sets of our own tokens, and as another issuer's (`[[issuer]]`) token
//!   against JWKS key sets of ES384, ES512 and PS256 (beside an RS256 key of the same RSA
//!   modulus);
//! - odd mode: the rest is `header JSON \n claims JSON` (or claims alone, under the key's
//!   usual header), signed with the key that `mode >> 1` picks, then verified. This is how
//!   the fuzzer reaches the claim checks, which a random signature never passes.
//!
//! Properties: `verify` never panics; whatever it accepts forwards header-safe identity
//! values; and whatever it accepts, `jsonwebtoken::decode` (same algorithm, issuer, audience,
//! leeway, `nbf` checked, `exp`/`iss`/`aud`/`sub` required) accepts too, with the same claims.
//! ES512 has no oracle (jsonwebtoken lacks P-521): its tokens are signed with aws-lc-rs and
//! held to the first two properties.
//! Two allowed differences, both about members Portcullis never reads: a header whose
//! registered parameters (`typ`, `x5c`, `jwk`, …) `jsonwebtoken` cannot parse, and, in a claim
//! Portcullis skips, a number beyond `f64` or an unpaired surrogate escape (`\ud800`): both
//! within the JSON grammar (RFC 8259), which `jsonwebtoken`'s `serde_json::Value` cannot hold.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use libfuzzer_sys::fuzz_target;
use portcullis::authn::{Alg, KeySet};
use portcullis::fuzzing::{self, AUDIENCE, ISSUER, LEEWAY_SECS, Verified};
use serde_json::Value;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/keys/");
const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";

/// `serde_json` errors that only a value Portcullis skips can cause it: it reads every claim
/// it keeps with the same parser, so these never come from a kept claim.
const SKIPPED_MEMBER_ONLY: &[&str] = &[
    "number out of range",
    "unexpected end of hex escape",
    "lone leading surrogate in hex escape",
];

struct Fixture {
    /// The header's `alg`.
    name: &'static str,
    kid: Option<&'static str>,
    keys: KeySet,
    /// Verified as another issuer's token (`[[issuer]]`: no `jti` needed) or as ours.
    external: bool,
    sign_with: Signer,
    /// Every key the set trusts, as `jsonwebtoken` reads it (none for ES512).
    oracle: Vec<DecodingKey>,
}

enum Signer {
    Jwt(Algorithm, EncodingKey),
    /// jsonwebtoken has no P-521.
    P521(EcdsaKeyPair),
}

impl Signer {
    fn sign(&self, message: &str) -> String {
        match self {
            Self::Jwt(alg, key) => {
                jsonwebtoken::crypto::sign(message.as_bytes(), key, *alg).expect("sign")
            }
            Self::P521(pair) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                B64.encode(pair.sign(&rng, message.as_bytes()).expect("sign"))
            }
        }
    }

    fn alg(&self) -> Option<Algorithm> {
        match self {
            Self::Jwt(alg, _) => Some(*alg),
            Self::P521(_) => None,
        }
    }
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fixture(alg: Alg, kid: Option<&'static str>, private: &str, public: &[&str]) -> Fixture {
    let material = if alg.is_symmetric() {
        SECRET.to_vec()
    } else {
        key(private)
    };
    let retired: Vec<(String, Vec<u8>)> = public[1..]
        .iter()
        .map(|p| (format!("old-{p}"), key(p)))
        .collect();
    let retired_refs: Vec<(&str, &[u8])> = retired
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_slice()))
        .collect();
    let (_issuer, keys) = fuzzing::signer_and_keys(
        alg,
        kid,
        &material,
        &retired_refs,
        Duration::from_secs(3600),
    )
    .expect("fixture keys");
    let (jwt_alg, sign_with, oracle): (_, _, Vec<DecodingKey>) = match alg {
        Alg::HS256 => (
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            vec![DecodingKey::from_secret(SECRET)],
        ),
        Alg::EdDSA => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&material).unwrap(),
            public
                .iter()
                .map(|p| DecodingKey::from_ed_pem(&key(p)).unwrap())
                .collect(),
        ),
        Alg::ES256 => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&material).unwrap(),
            public
                .iter()
                .map(|p| DecodingKey::from_ec_pem(&key(p)).unwrap())
                .collect(),
        ),
        Alg::RS256 => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&material).unwrap(),
            public
                .iter()
                .map(|p| DecodingKey::from_rsa_pem(&key(p)).unwrap())
                .collect(),
        ),
        // Other issuers' algorithms only: no own key set of them to fixture.
        Alg::ES384 | Alg::ES512 | Alg::PS256 => unreachable!("not an own-token algorithm"),
    };
    Fixture {
        name: alg.as_str(),
        kid,
        keys,
        external: false,
        sign_with: Signer::Jwt(jwt_alg, sign_with),
        oracle,
    }
}

/// Another issuer's key set, of the fixture key of `alg` under `kid`, beside an RS256 key of
/// the RSA fixture under `rs` (for PS256 a key of the same modulus bound to another algorithm).
fn external(alg: Alg, kid: &'static str, private: &str, public: &str) -> Fixture {
    let rsa = key("rsa.pub.pem");
    let public_pem = key(public);
    let keys = fuzzing::external_keys(&[(alg, kid, &public_pem), (Alg::RS256, "rs", &rsa)])
        .expect("fixture JWKS");
    let material = key(private);
    let (sign_with, oracle) = match alg {
        Alg::ES384 => (
            Signer::Jwt(
                Algorithm::ES384,
                EncodingKey::from_ec_pem(&material).unwrap(),
            ),
            vec![DecodingKey::from_ec_pem(&public_pem).unwrap()],
        ),
        Alg::PS256 => (
            Signer::Jwt(
                Algorithm::PS256,
                EncodingKey::from_rsa_pem(&material).unwrap(),
            ),
            vec![DecodingKey::from_rsa_pem(&public_pem).unwrap()],
        ),
        Alg::ES512 => {
            let der = pem_contents(&material);
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, &der).unwrap();
            (Signer::P521(pair), Vec::new())
        }
        _ => unreachable!("the external fixtures are ES384, ES512 and PS256"),
    };
    Fixture {
        name: alg.as_str(),
        kid: Some(kid),
        keys,
        external: true,
        sign_with,
        oracle,
    }
}

/// The DER inside a one-block PEM file.
fn pem_contents(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).expect("PEM is text");
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM base64")
}

static FIXTURES: LazyLock<Vec<Fixture>> = LazyLock::new(|| {
    vec![
        fixture(Alg::HS256, None, "", &[""]),
        fixture(
            Alg::EdDSA,
            Some("k1"),
            "ed25519.pem",
            &["ed25519.pub.pem", "ed25519-old.pub.pem"],
        ),
        fixture(Alg::ES256, Some("es"), "p256.pem", &["p256.pub.pem"]),
        fixture(Alg::RS256, Some("rs"), "rsa.pem", &["rsa.pub.pem"]),
        external(Alg::ES384, "e384", "p384.pem", "p384.pub.pem"),
        external(Alg::ES512, "e512", "p521.pem", "p521.pub.pem"),
        external(Alg::PS256, "ps", "rsa.pem", "rsa.pub.pem"),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = portcullis::clock::unix_secs();
    if mode % 2 == 0 {
        for f in FIXTURES.iter() {
            check(f, rest, now);
        }
        return;
    }
    let f = &FIXTURES[usize::from(mode >> 1) % FIXTURES.len()];
    let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (rest[..i].to_vec(), &rest[i + 1..]),
        None => {
            let mut h = serde_json::json!({"alg": f.name, "typ": "JWT"});
            if let Some(kid) = f.kid {
                h["kid"] = kid.into();
            }
            (h.to_string().into_bytes(), rest)
        }
    };
    let message = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = f.sign_with.sign(&message);
    check(f, format!("{message}.{sig}").as_bytes(), now);
});

fn check(f: &Fixture, token: &[u8], now: u64) {
    let verified = if f.external {
        fuzzing::verify_external(token, &f.keys, now)
    } else {
        fuzzing::verify(token, &f.keys, now)
    };
    let Ok(ours) = verified else {
        return;
    };
    for value in std::iter::once(&ours.user_id).chain(ours.email.as_ref()) {
        let b = value.as_bytes();
        assert!(!b.is_empty() && b.len() <= 256 && b.iter().all(|c| (0x21..0x7f).contains(c)));
    }
    let Some(alg) = f.sign_with.alg() else {
        return; // ES512: no oracle
    };
    if jsonwebtoken::decode_header(token).is_err() {
        return; // the first allowed difference, see the module comment
    }
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let mut refusals = Vec::new();
    for key in &f.oracle {
        match jsonwebtoken::decode::<Value>(token, key, &validation) {
            Ok(data) => return same_claims(&ours, &data.claims, token),
            Err(e) => refusals.push(e),
        }
    }
    let beyond_f64 = |e: &jsonwebtoken::errors::Error| {
        matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Json(j)
            if SKIPPED_MEMBER_ONLY.iter().any(|m| j.to_string().starts_with(m)))
    };
    // A fixture trusts several keys: the ones that did not sign the token refuse it for its
    // signature, whatever its claims. Only the refusals of the key that signed it count.
    let by_signer: Vec<_> = refusals
        .iter()
        .filter(|e| !matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature))
        .collect();
    if !by_signer.is_empty() && by_signer.iter().all(|e| beyond_f64(e)) {
        return; // the second allowed difference
    }
    // The two libraries read the clock a moment apart: a token within a second or two of an
    // edge of its validity may fall either side.
    let claims = claims_of(token).unwrap_or_default();
    let near = |name: &str, edge: f64| {
        claims
            .get(name)
            .and_then(Value::as_f64)
            .is_some_and(|t| (t - edge).abs() <= 2.0)
    };
    let (now, leeway) = (now as f64, LEEWAY_SECS as f64);
    if near("exp", now - leeway) || near("nbf", now + leeway) {
        return;
    }
    panic!(
        "Portcullis accepted a token jsonwebtoken refuses ({refusals:?}): {}",
        String::from_utf8_lossy(token)
    );
}

fn claims_of(token: &[u8]) -> Option<Value> {
    let payload = token.split(|&b| b == b'.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

fn same_claims(ours: &Verified, theirs: &Value, token: &[u8]) {
    let token = String::from_utf8_lossy(token);
    assert_eq!(
        theirs["sub"].as_str(),
        Some(ours.sub()),
        "sub differs: {token}"
    );
    let email = theirs.get("email").filter(|e| !e.is_null());
    assert_eq!(
        email.and_then(Value::as_str).map(str::as_bytes),
        ours.email.as_ref().map(|e| e.as_bytes()),
        "email differs: {token}"
    );
    let secs = |v: &Value| v.as_f64().map(f64::floor);
    assert_eq!(
        secs(&theirs["exp"]),
        Some(ours.exp as f64),
        "exp differs: {token}"
    );
    if let Some(iat) = ours.iat {
        assert_eq!(
            secs(&theirs["iat"]),
            Some(iat as f64),
            "iat differs: {token}"
        );
    }
    if let Some(jti) = ours.jti {
        let theirs = theirs["jti"]
            .as_str()
            .and_then(|j| uuid::Uuid::try_parse(j).ok());
        assert_eq!(theirs, Some(jti), "jti differs: {token}");
    }
}
