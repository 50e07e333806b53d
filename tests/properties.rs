//! Property tests (proptest) for the pure pieces the edge's promises rest on: path
//! canonicalisation, token minting and verification, the identity body parser and the
//! identity-header strip. The fuzz targets in `fuzz/` push the same properties further.

use std::time::Duration;

use pingora::http::RequestHeader;
use portcullis::authn::issue::TokenIssuer;
use portcullis::authn::{Alg, KeySet};
use portcullis::fuzzing::{self, TokenError, normalise};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// paths
// ---------------------------------------------------------------------------------------------

/// Paths built from the pieces that make canonicalisation hard.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", "a", "b", "api", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F", "%5c",
        "%00", "%25", "%32", "%3B", "%3b", ";", ";x=1", "~", "%7e", "%41", "\\", "é", "%c3%a9",
        "%", "2e", "e", "x%20y",
    ]);
    prop::collection::vec(piece, 0..14).prop_map(|parts| format!("/{}", parts.concat()))
}

/// Percent-decodes until nothing changes, as an upstream that decodes twice would.
fn decode_fully(seg: &str) -> String {
    let mut cur = seg.to_owned();
    loop {
        let next = percent_encoding::percent_decode_str(&cur)
            .decode_utf8_lossy()
            .into_owned();
        if next == cur {
            return cur;
        }
        cur = next;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn canonical_paths_are_fixed_points(path in hostile_path()) {
        if let Ok(canonical) = normalise(&path) {
            let again = normalise(&canonical);
            prop_assert_eq!(again.as_deref(), Ok(&*canonical), "{:?} -> {:?}", path, canonical);
        }
    }

    #[test]
    fn canonical_paths_never_carry_a_dot_segment_or_an_encoded_separator(path in hostile_path()) {
        if let Ok(canonical) = normalise(&path) {
            prop_assert!(canonical.starts_with('/'));
            prop_assert!(!canonical.contains('\\'));
            let segments: Vec<&str> = canonical[1..].split('/').collect();
            for (i, seg) in segments.iter().enumerate() {
                prop_assert!(!seg.is_empty() || i + 1 == segments.len(), "{path:?} -> {canonical:?}");
                let decoded = decode_fully(seg);
                let base = decoded.split(';').next().unwrap_or_default();
                prop_assert!(base != "." && base != "..", "{path:?} -> {canonical:?}");
                prop_assert!(!decoded.contains(['/', '\\', '\0']), "{path:?} -> {canonical:?}");
            }
        }
    }

    #[test]
    fn no_path_climbs_above_the_root(depth in 0usize..4, ups in 1usize..6) {
        let path = format!("{}{}/x", "/d".repeat(depth), "/..".repeat(ups));
        let result = normalise(&path);
        if ups > depth {
            prop_assert!(result.is_err(), "{path:?} -> {result:?}");
        } else {
            prop_assert_eq!(result.unwrap(), format!("{}/x", "/d".repeat(depth - ups)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tokens
// ---------------------------------------------------------------------------------------------

const NOW: u64 = 1_800_000_000;

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/keys/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn signer(alg: Alg) -> (TokenIssuer, KeySet) {
    let (kid, material, previous): (_, Vec<u8>, Vec<(&str, Vec<u8>)>) = match alg {
        Alg::HS256 => (None, b"0123456789abcdef0123456789abcdef".to_vec(), vec![]),
        Alg::EdDSA => (
            Some("k1"),
            key_file("ed25519.pem"),
            vec![("k0", key_file("ed25519-old.pub.pem"))],
        ),
        Alg::ES256 => (Some("es"), key_file("p256.pem"), vec![]),
        Alg::RS256 => (Some("rs"), key_file("rsa.pem"), vec![]),
        // Other issuers' algorithms only: the gateway signs no tokens with them.
        Alg::ES384 | Alg::ES512 | Alg::PS256 => unreachable!("not an own-token algorithm"),
    };
    let previous: Vec<(&str, &[u8])> = previous.iter().map(|(k, p)| (*k, p.as_slice())).collect();
    fuzzing::signer_and_keys(alg, kid, &material, &previous, Duration::from_secs(3600)).unwrap()
}

const ALGS: [Alg; 4] = [Alg::HS256, Alg::EdDSA, Alg::ES256, Alg::RS256];

/// Mint with `alg`, then: verification accepts it with the same identity; every one of
/// `mutations` (a position and a different byte) makes it invalid; every other algorithm's
/// key set refuses it.
fn round_trip(
    alg: Alg,
    user: u128,
    email: &str,
    mutations: &[(prop::sample::Index, u8)],
) -> Result<(), TestCaseError> {
    let sets: Vec<(Alg, (TokenIssuer, KeySet))> = ALGS.iter().map(|&a| (a, signer(a))).collect();
    let (issuer, keys) = &sets.iter().find(|(a, _)| *a == alg).unwrap().1;
    let user = uuid::Uuid::from_u128(user);
    let minted = issuer.mint(user, email, &[], NOW).unwrap();
    let token = minted.token.as_bytes();

    let who = fuzzing::verify(token, keys, NOW + 10)
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(who.sub(), user.to_string());
    prop_assert_eq!(who.email.as_ref().unwrap().as_bytes(), email.as_bytes());
    prop_assert_eq!(who.jti, Some(minted.jti));
    prop_assert_eq!(who.exp, minted.exp);
    prop_assert_eq!(
        fuzzing::verify(token, keys, minted.exp + 31).unwrap_err(),
        TokenError::Expired
    );

    for (at, byte) in mutations {
        let mut evil = token.to_vec();
        let i = at.index(evil.len());
        if evil[i] == *byte {
            continue;
        }
        evil[i] = *byte;
        let result = fuzzing::verify(&evil, keys, NOW + 10);
        prop_assert!(
            result.is_err(),
            "{alg:?}: byte {i} {:?} -> {:?} accepted",
            char::from(token[i]),
            char::from(*byte)
        );
    }
    for (other, (_, other_keys)) in &sets {
        if *other != alg {
            prop_assert!(
                fuzzing::verify(token, other_keys, NOW + 10).is_err(),
                "{alg:?} token, {other:?} keys"
            );
        }
    }
    Ok(())
}

fn email() -> impl Strategy<Value = String> {
    "[a-z0-9.+_-]{1,20}@[a-z0-9-]{1,12}\\.[a-z]{2,6}"
}

fn mutations() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn hs256_tokens_round_trip_and_any_changed_byte_is_refused(
        user in any::<u128>(), email in email(), m in mutations()
    ) {
        round_trip(Alg::HS256, user, &email, &m)?;
    }

    #[test]
    fn eddsa_tokens_round_trip_and_any_changed_byte_is_refused(
        user in any::<u128>(), email in email(), m in mutations()
    ) {
        round_trip(Alg::EdDSA, user, &email, &m)?;
    }

    #[test]
    fn es256_tokens_round_trip_and_any_changed_byte_is_refused(
        user in any::<u128>(), email in email(), m in mutations()
    ) {
        round_trip(Alg::ES256, user, &email, &m)?;
    }
}

proptest! {
    // RSA signing is slow in a debug build: fewer cases, each with more mutations.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn rs256_tokens_round_trip_and_any_changed_byte_is_refused(
        user in any::<u128>(),
        email in email(),
        m in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..96),
    ) {
        round_trip(Alg::RS256, user, &email, &m)?;
    }
}

/// Other issuers' algorithms (`[[issuer]]` JWKS keys): a fixture key per algorithm, under
/// its kid, in one external key set with an RS256 key of the same RSA modulus (kid `rs`), so
/// that a PS256 token naming the RS256 key, or the reverse, is an algorithm confusion.
const EXTERNAL: [(Alg, &str, &str, &str); 3] = [
    (Alg::ES384, "e384", "p384.pem", "p384.pub.pem"),
    (Alg::ES512, "e512", "p521.pem", "p521.pub.pem"),
    (Alg::PS256, "ps", "rsa.pem", "rsa.pub.pem"),
];

fn external_set() -> KeySet {
    let pems: Vec<(Alg, &str, Vec<u8>)> = EXTERNAL
        .iter()
        .map(|&(alg, kid, _, public)| (alg, kid, key_file(public)))
        .chain([(Alg::RS256, "rs", key_file("rsa.pub.pem"))])
        .collect();
    let refs: Vec<(Alg, &str, &[u8])> = pems
        .iter()
        .map(|(a, k, p)| (*a, *k, p.as_slice()))
        .collect();
    fuzzing::external_keys(&refs).unwrap()
}

/// Another issuer's token: `claims` under `{alg, kid}`, signed with the fixture key of `alg`
/// (jsonwebtoken for ES384, PS256 and RS256; aws-lc-rs for ES512, which jsonwebtoken lacks).
fn external_token(alg: Alg, kid: &str, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let private = match alg {
        Alg::ES384 => "p384.pem",
        Alg::ES512 => "p521.pem",
        _ => "rsa.pem",
    };
    let pem_bytes = key_file(private);
    if alg == Alg::ES512 {
        use aws_lc_rs::signature::{ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair};
        let der = pem::parse(&pem_bytes).unwrap().into_contents();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, &der).unwrap();
        let header = serde_json::json!({"alg": "ES512", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        return format!("{input}.{}", b64(sig.as_ref()));
    }
    let (jwt_alg, key) = match alg {
        Alg::ES384 => (
            jsonwebtoken::Algorithm::ES384,
            jsonwebtoken::EncodingKey::from_ec_pem(&pem_bytes).unwrap(),
        ),
        Alg::PS256 => (
            jsonwebtoken::Algorithm::PS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(&pem_bytes).unwrap(),
        ),
        _ => (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(&pem_bytes).unwrap(),
        ),
    };
    let mut header = jsonwebtoken::Header::new(jwt_alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// What jsonwebtoken (the oracle, where it has the algorithm) makes of `token` with the
/// public fixture key of `alg`: `None` for ES512.
fn oracle_accepts(alg: Alg, token: &str) -> Option<bool> {
    let (jwt_alg, key) = match alg {
        Alg::ES384 => (
            jsonwebtoken::Algorithm::ES384,
            jsonwebtoken::DecodingKey::from_ec_pem(&key_file("p384.pub.pem")).unwrap(),
        ),
        Alg::PS256 => (
            jsonwebtoken::Algorithm::PS256,
            jsonwebtoken::DecodingKey::from_rsa_pem(&key_file("rsa.pub.pem")).unwrap(),
        ),
        _ => return None,
    };
    let mut v = jsonwebtoken::Validation::new(jwt_alg);
    v.leeway = fuzzing::LEEWAY_SECS;
    v.set_issuer(&[fuzzing::ISSUER]);
    v.set_audience(&[fuzzing::AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // jsonwebtoken reads the system clock: the claims are made around it.
    Some(jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).is_ok())
}

/// Another issuer's token of `alg`, without `jti` (Better Auth mints none): accepted with the
/// same identity, and by jsonwebtoken; every changed byte refused, by both; the same claims
/// under a kid bound to another algorithm refused.
fn external_round_trip(
    alg: Alg,
    user: &str,
    email: &str,
    mutations: &[(prop::sample::Index, u8)],
) -> Result<(), TestCaseError> {
    let keys = external_set();
    let now = portcullis::clock::unix_secs();
    let claims = serde_json::json!({"sub": user, "email": email, "iat": now, "exp": now + 600,
        "iss": fuzzing::ISSUER, "aud": fuzzing::AUDIENCE});
    let kid = EXTERNAL.iter().find(|e| e.0 == alg).unwrap().1;
    let token = external_token(alg, kid, &claims);
    let who = fuzzing::verify_external(token.as_bytes(), &keys, now)
        .map_err(|e| TestCaseError::fail(format!("{alg:?}: {e:?}")))?;
    prop_assert_eq!(who.sub(), user);
    prop_assert_eq!(who.email.as_ref().unwrap().as_bytes(), email.as_bytes());
    prop_assert_eq!(who.jti, None);
    prop_assert_eq!(who.exp, now + 600);
    prop_assert!(oracle_accepts(alg, &token).unwrap_or(true));
    prop_assert_eq!(
        fuzzing::verify_external(token.as_bytes(), &keys, now + 600 + 31).unwrap_err(),
        TokenError::Expired
    );
    for (at, byte) in mutations {
        let mut evil = token.clone().into_bytes();
        let i = at.index(evil.len());
        if evil[i] == *byte {
            continue;
        }
        evil[i] = *byte;
        let ours = fuzzing::verify_external(&evil, &keys, now).is_ok();
        prop_assert!(
            !ours,
            "{alg:?}: byte {i} -> {:?} accepted",
            char::from(*byte)
        );
        if let Ok(evil) = std::str::from_utf8(&evil) {
            prop_assert_ne!(oracle_accepts(alg, evil), Some(true), "oracle: byte {}", i);
        }
    }
    // The key named is bound to its own algorithm: a token naming another kid is refused.
    for (other, other_kid, ..) in EXTERNAL.iter().chain(&[(Alg::RS256, "rs", "", "")]) {
        if *other != alg {
            let confused = external_token(alg, other_kid, &claims);
            prop_assert!(
                fuzzing::verify_external(confused.as_bytes(), &keys, now).is_err(),
                "{alg:?} token naming the {other:?} key {other_kid}"
            );
        }
    }
    Ok(())
}

proptest! {
    // RSA and P-521 signing are slow in a debug build: few cases, many mutations each.
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn es384_es512_and_ps256_tokens_of_other_issuers_round_trip_and_changed_bytes_are_refused(
        user in "[A-Za-z0-9_-]{1,40}",
        email in email(),
        m in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..48),
    ) {
        for (alg, ..) in EXTERNAL {
            external_round_trip(alg, &user, &email, &m)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// identity bodies
// ---------------------------------------------------------------------------------------------

/// JSON-ish values: right and wrong types, escapes, NUL, long and non-ASCII strings.
fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[ -~]{0,80}\"",
        "\"[a-z]{1,10}@[a-z]{1,10}\\.[a-z]{2,3}\"",
        "\"(\\\\u0000|\\\\u00e9|\\\\ud83d\\\\ude00|\\\\\"|é|\\\\n){0,8}[a-z]{0,80}\"",
        Just("null".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:e}")),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop::sample::select(vec!["email", "password", "Email", "admin", "", "password"]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec((field, json_value()), 0..4).prop_map(|fields| {
            let members: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", members.join(",")).into_bytes()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn the_body_parser_answers_every_body_with_a_value_or_a_4xx(body in body()) {
        match fuzzing::parse_credentials(&body) {
            Ok(ep) => {
                prop_assert_eq!(ep.email.trim(), &ep.email);
                prop_assert!(ep.email.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!((fuzzing::MIN_PASSWORD_BYTES..=fuzzing::MAX_PASSWORD_BYTES)
                    .contains(&ep.password.len()));
                prop_assert!(!ep.password.contains(&0));
            }
            Err(p) => {
                prop_assert!(p.status() == 400 || p.status() == 422, "{}", p.status());
                let json: serde_json::Value = serde_json::from_slice(&p.body()).unwrap();
                prop_assert_eq!(&json["status"], &serde_json::json!(p.status()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// identity headers
// ---------------------------------------------------------------------------------------------

/// `word` with each letter's case chosen by `mask`.
fn cased(word: &str, mask: u16) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> i & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn sep() -> impl Strategy<Value = char> {
    prop::sample::select(vec!['-', '_'])
}

/// Every spelling of `x-user-<anything>`: case, `-` or `_` at either place.
fn identity_header() -> impl Strategy<Value = String> {
    (any::<u16>(), sep(), sep(), "[a-zA-Z0-9_-]{0,16}").prop_map(|(mask, a, b, rest)| {
        format!(
            "{}{a}{}{b}{rest}",
            cased("x", mask),
            cased("user", mask >> 1)
        )
    })
}

/// Names outside the namespace, some of them close to it.
fn other_header() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-wyz][a-z0-9-]{0,12}",
        (any::<u16>(), sep(), "[a-zA-Z0-9][a-zA-Z0-9-]{0,8}").prop_map(|(mask, a, rest)| format!(
            "{}{a}{}{rest}",
            cased("x", mask),
            cased("user", mask >> 1)
        )),
        (sep(), "[a-z]{1,4}").prop_map(|(a, rest)| format!("x{a}usr-{rest}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_spelling_of_an_identity_header_is_stripped_and_nothing_else(
        doomed in prop::collection::vec(identity_header(), 1..6),
        kept in prop::collection::vec(other_header(), 0..6),
    ) {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for name in doomed.iter().chain(&kept) {
            prop_assert!(req.append_header(name.clone(), "v").is_ok(), "{name}");
        }
        for name in &doomed {
            prop_assert!(fuzzing::is_identity_header(&name.to_ascii_lowercase()), "{name}");
        }
        fuzzing::strip_identity_headers(&mut req);
        for name in &doomed {
            prop_assert!(!req.headers.contains_key(name.as_str()), "{name} survived");
        }
        for name in &kept {
            prop_assert!(req.headers.contains_key(name.as_str()), "{name} was removed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// claim rules (CONTRACT section 10): the one-pass reader against a model over parsed JSON
// ---------------------------------------------------------------------------------------------

const RULE_CLAIMS: [&str; 4] = ["role", "roles", "org", "x"];
const RULE_WORDS: [&str; 6] = [
    "admin",
    "user",
    "a b",
    "tasks:write",
    "tasks:read tasks:write",
    "a",
];

fn claim_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let word = prop::sample::select(&RULE_WORDS[..]).prop_map(Value::from);
    prop_oneof![
        word.clone(),
        prop::collection::vec(
            prop_oneof![word.clone(), Just(json!(1)), Just(json!(["admin"]))],
            0..4
        )
        .prop_map(Value::from),
        Just(json!(7)),
        Just(json!(true)),
        Just(Value::Null),
        Just(json!({"role": "admin"})),
    ]
}

fn claims_object() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    let names = prop::sample::select(vec!["role", "roles", "org", "x", "scope", "scp", "sub"]);
    prop::collection::btree_map(names, claim_value(), 0..7)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn claim_rules() -> impl Strategy<Value = portcullis::config::ClaimRules> {
    (
        prop::collection::btree_map(
            prop::sample::select(&RULE_CLAIMS[..]),
            prop::sample::select(&RULE_WORDS[..]),
            0..3,
        ),
        prop::collection::btree_set(
            prop::sample::select(vec!["admin", "a", "b", "tasks:write", "tasks:read"]),
            0..3,
        ),
    )
        .prop_map(|(require, scopes)| portcullis::config::ClaimRules {
            require: require
                .into_iter()
                .map(|(c, v)| (c.to_owned(), v.to_owned()))
                .collect(),
            scopes: scopes.into_iter().map(str::to_owned).collect(),
        })
}

/// The rules as CONTRACT section 10 words them, over the parsed claims.
fn model_admits(
    rules: &portcullis::config::ClaimRules,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> bool {
    use serde_json::Value;
    let holds = |v: Option<&Value>, want: &str| match v {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => a.iter().any(|e| e.as_str() == Some(want)),
        _ => false,
    };
    let mut granted: Vec<&str> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => granted.extend(s.split_ascii_whitespace()),
            Some(Value::Array(a)) => granted.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    rules.require.iter().all(|(c, v)| holds(claims.get(c), v))
        && rules.scopes.iter().all(|s| granted.contains(&s.as_str()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn claim_rules_admit_exactly_what_the_contract_says(
        rules in claim_rules(),
        claims in claims_object(),
    ) {
        let json = serde_json::to_vec(&claims).unwrap();
        prop_assert_eq!(
            portcullis::authn::rules::admits(&rules, &json),
            model_admits(&rules, &claims),
            "{:?} over {}", rules, String::from_utf8_lossy(&json)
        );
    }
}
