//! CONTRACT section 3, asymmetric keys: EdDSA, ES256 and RS256 gateways, key rotation by `kid`,
//! algorithm confusion, and the published JWKS.

use super::*;

fn ed_gateway() -> Gateway {
    Gateway::start(&config(cfg::EDDSA, "", ""), &[])
}

#[test]
fn eddsa_gateway_accepts_current_key_token() {
    let gw = ed_gateway();
    let sub = new_sub();
    let c = claims(&sub);
    let seen = assert_accepted(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k1"), &c),
        &sub,
    );
    assert_identity(&seen, Some((&sub, Some(&email_of(&c)))));
}

#[test]
fn eddsa_gateway_accepts_previous_key_for_rotation() {
    let gw = ed_gateway();
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(
            Algorithm::EdDSA,
            "ed25519-old.pem",
            Some("k0"),
            &claims(&sub),
        ),
        &sub,
    );
}

#[test]
fn eddsa_gateway_tries_every_key_for_a_token_without_kid() {
    let gw = ed_gateway();
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", None, &claims(&sub)),
        &sub,
    );
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519-old.pem", None, &claims(&sub)),
        &sub,
    );
}

#[test]
fn eddsa_gateway_rejects_hs256_tokens_and_alg_confusion() {
    let gw = Gateway::start(&config(cfg::EDDSA, "", ""), &[]);
    let c = claims(&new_sub());
    // plain HS256 with the (unrelated) test secret
    assert_rejected(&gw, &hs256(&c), "invalid_token");
    // HS256 keyed with the public key material, under the asymmetric kid
    let pub_pem = read_key("ed25519.pub.pem");
    assert_rejected(&gw, &hs256_with(&pub_pem, &c, Some("k1")), "invalid_token");
    assert_rejected(&gw, &hs256_with(&pub_pem, &c, None), "invalid_token");
    assert_rejected(
        &gw,
        &hs256_with(&ed25519_raw_public("ed25519.pub.pem"), &c, Some("k1")),
        "invalid_token",
    );
    let old_pem = read_key("ed25519-old.pub.pem");
    assert_rejected(&gw, &hs256_with(&old_pem, &c, Some("k0")), "invalid_token");
}

#[test]
fn eddsa_gateway_rejects_unknown_kid() {
    let gw = ed_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("zz"), &c),
        "invalid_token",
    );
}

#[test]
fn eddsa_gateway_rejects_a_key_under_the_wrong_kid() {
    let gw = ed_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519-old.pem", Some("k1"), &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k0"), &c),
        "invalid_token",
    );
}

#[test]
fn eddsa_gateway_rejects_other_algorithms_and_none() {
    let gw = ed_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::ES256, "p256.pem", Some("k1"), &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::RS256, "rsa.pem", Some("k1"), &c),
        "invalid_token",
    );
    assert_rejected(&gw, &alg_none(&c), "invalid_token");
    let h = b64url(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    assert_rejected(
        &gw,
        &format!("{h}.{}.", b64url(c.to_string().as_bytes())),
        "invalid_token",
    );
}

#[test]
fn eddsa_gateway_enforces_claims_too() {
    let gw = ed_gateway();
    let expired = claims_with(&new_sub(), |m| {
        m.insert("exp".into(), json!(now() - 120));
    });
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k1"), &expired),
        "token_expired",
    );
    let wrong_aud = claims_with(&new_sub(), |m| {
        m.insert("aud".into(), json!("elsewhere"));
    });
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k1"), &wrong_aud),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &tamper_signature(&sign_pem(
            Algorithm::EdDSA,
            "ed25519.pem",
            Some("k1"),
            &claims(&new_sub()),
        )),
        "invalid_token",
    );
}

#[test]
fn es256_gateway_accepts_its_tokens_and_rejects_confusion() {
    let gw = Gateway::start(&config(cfg::ES256, "", ""), &[]);
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::ES256, "p256.pem", Some("ec1"), &claims(&sub)),
        &sub,
    );
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(&read_key("p256.pub.pem"), &c, Some("ec1")),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("ec1"), &c),
        "invalid_token",
    );
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn rs256_gateway_accepts_its_tokens_and_rejects_confusion() {
    let gw = Gateway::start(&config(cfg::RS256, "", ""), &[]);
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::RS256, "rsa.pem", Some("rsa1"), &claims(&sub)),
        &sub,
    );
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(&read_key("rsa.pub.pem"), &c, Some("rsa1")),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &hs256_with(&read_key("rsa.pub.pem"), &c, None),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::PS256, "rsa.pem", Some("rsa1"), &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::RS512, "rsa.pem", Some("rsa1"), &c),
        "invalid_token",
    );
}

fn jwks(gw: &Gateway) -> Value {
    let r = gw.get("/.well-known/jwks.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.contains("json"), "JWKS content-type: {ct:?}");
    assert!(r.request_id().is_some());
    let v = r.json();
    for k in v["keys"].as_array().expect("keys array") {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                k.get(private).is_none(),
                "JWKS must not publish private field {private}: {k}"
            );
        }
    }
    v
}

/// The published key verifies a token signed with the fixture private key.
#[track_caller]
fn jwk_verifies(jwk: &Value, alg: Algorithm, token: &str) {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).expect("parse JWK");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("JWK to key");
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[AUDIENCE]);
    v.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(token, &key, &v).expect("the published key verifies our token");
}

#[test]
fn jwks_lists_current_and_previous_ed25519_keys() {
    let gw = ed_gateway();
    let v = jwks(&gw);
    let keys = v["keys"].as_array().unwrap();
    let find = |kid: &str| {
        keys.iter()
            .find(|k| k["kid"] == kid)
            .unwrap_or_else(|| panic!("kid {kid} not in JWKS: {v}"))
    };
    for (kid, pub_pem) in [("k1", "ed25519.pub.pem"), ("k0", "ed25519-old.pub.pem")] {
        let k = find(kid);
        assert_eq!(k["kty"], "OKP", "{k}");
        assert_eq!(k["crv"], "Ed25519", "{k}");
        assert_eq!(
            k["x"],
            b64url(&ed25519_raw_public(pub_pem)),
            "{kid}: x is the raw public key"
        );
    }
    jwk_verifies(
        find("k1"),
        Algorithm::EdDSA,
        &sign_pem(
            Algorithm::EdDSA,
            "ed25519.pem",
            Some("k1"),
            &claims(&new_sub()),
        ),
    );
    jwk_verifies(
        find("k0"),
        Algorithm::EdDSA,
        &sign_pem(
            Algorithm::EdDSA,
            "ed25519-old.pem",
            Some("k0"),
            &claims(&new_sub()),
        ),
    );
    assert_eq!(
        keys.len(),
        2,
        "exactly the current and the previous key: {v}"
    );
}

#[test]
fn jwks_publishes_ec_and_rsa_keys() {
    let gw = Gateway::start(&config(cfg::ES256, "", ""), &[]);
    let v = jwks(&gw);
    let k = &v["keys"][0];
    assert_eq!(k["kid"], "ec1");
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    jwk_verifies(
        k,
        Algorithm::ES256,
        &sign_pem(
            Algorithm::ES256,
            "p256.pem",
            Some("ec1"),
            &claims(&new_sub()),
        ),
    );
    drop(gw);

    let gw = Gateway::start(&config(cfg::RS256, "", ""), &[]);
    let v = jwks(&gw);
    let k = &v["keys"][0];
    assert_eq!(k["kid"], "rsa1");
    assert_eq!(k["kty"], "RSA");
    assert!(k["n"].is_string() && k["e"].is_string(), "{k}");
    jwk_verifies(
        k,
        Algorithm::RS256,
        &sign_pem(
            Algorithm::RS256,
            "rsa.pem",
            Some("rsa1"),
            &claims(&new_sub()),
        ),
    );
}

#[test]
fn jwks_is_404_on_an_hs256_gateway() {
    let gw = hs_gateway();
    let r = gw.get("/.well-known/jwks.json", &[]);
    assert_problem(&r, 404, "not_found");
    assert!(!r.text().contains(SECRET), "never the secret");
    gw.up().assert_not_called();
}
