//! CONTRACT section 3, HS256 tokens: every way a token is refused (401 and its code), and what
//! is accepted within the leeway.

use super::*;

#[test]
fn bad_signature_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(b"another-secret-that-is-long-enough-000000", &c, None),
        "invalid_token",
    );
}

#[test]
fn tampered_signature_is_invalid_token() {
    let gw = hs_gateway();
    assert_rejected(
        &gw,
        &tamper_signature(&token_for(&new_sub())),
        "invalid_token",
    );
}

#[test]
fn swapped_payload_with_original_signature_is_invalid_token() {
    let gw = hs_gateway();
    let victim = new_sub();
    let forged = swap_payload(&token_for(&new_sub()), &claims(&victim));
    assert_rejected(&gw, &forged, "invalid_token");
}

#[test]
fn alg_none_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(&gw, &alg_none(&c), "invalid_token");
    for alg in ["None", "NONE", "nOnE"] {
        let h = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        let p = b64url(c.to_string().as_bytes());
        assert_rejected(&gw, &format!("{h}.{p}."), "invalid_token");
    }
    // alg none with a (valid HS256) signature attached
    let hs = hs256(&c);
    let sig = hs.rsplit_once('.').unwrap().1;
    assert_rejected(&gw, &format!("{}{sig}", alg_none(&c)), "invalid_token");
}

#[test]
fn asymmetric_token_on_hs256_gateway_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::RS256, "rsa.pem", None, &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", None, &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::ES256, "p256.pem", None, &c),
        "invalid_token",
    );
}

#[test]
fn hs256_header_claiming_another_alg_is_invalid_token() {
    // signed with the right secret, but the header says HS384 / HS512 / RS256
    let gw = hs_gateway();
    let c = claims(&new_sub());
    for alg in ["HS384", "HS512", "RS256"] {
        let t = hs256_raw_header(
            &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
            &c,
            SECRET.as_bytes(),
        );
        assert_rejected(&gw, &t, "invalid_token");
    }
    // sanity: the same forging helper with the honest header is accepted
    let sub = new_sub();
    let ok = hs256_raw_header(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims(&sub),
        SECRET.as_bytes(),
    );
    assert_accepted(&gw, &ok, &sub);
}

#[test]
fn missing_required_claims_are_invalid_token() {
    let gw = hs_gateway();
    for claim in ["exp", "sub", "iss", "aud"] {
        let c = claims_with(&new_sub(), |m| {
            m.remove(claim);
        });
        let t = hs256(&c);
        let r = bearer(&gw, "/req/x", &t);
        assert_401(&r, "invalid_token", true);
        assert_no_token_echo(&r, &t);
    }
    gw.up().assert_not_called();
}

#[test]
fn wrong_issuer_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("iss".into(), json!("someone-else"));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn wrong_audience_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("aud".into(), json!("someone-else"));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
    let c = claims_with(&new_sub(), |m| {
        m.insert("aud".into(), json!(["a", "b"]));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn audience_array_containing_ours_is_accepted() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.insert("aud".into(), json!(["other", AUDIENCE]));
    });
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn future_nbf_beyond_leeway_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("nbf".into(), json!(now() + 120));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn nbf_within_leeway_is_accepted() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.insert("nbf".into(), json!(now() + 10));
    });
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn expired_beyond_leeway_is_token_expired() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("iat".into(), json!(now() - 4000));
        m.insert("exp".into(), json!(now() - 120));
    });
    assert_rejected(&gw, &hs256(&c), "token_expired");
}

#[test]
fn expired_within_leeway_is_accepted() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.insert("iat".into(), json!(now() - 4000));
        m.insert("exp".into(), json!(now() - 10));
    });
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn expired_token_with_bad_signature_is_invalid_not_expired() {
    // claims of an unverified token must not be trusted, not even to say "expired"
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("exp".into(), json!(now() - 120));
    });
    assert_rejected(
        &gw,
        &hs256_with(b"not-the-secret-not-the-secret-not-the-secret", &c, None),
        "invalid_token",
    );
}

#[test]
fn oversized_token_is_invalid_token() {
    let gw = hs_gateway();
    let t = oversized_token(&new_sub());
    let r = bearer(&gw, "/req/x", &t);
    assert_401(&r, "invalid_token", true);
    assert_no_token_echo(&r, &t);
    gw.up().assert_not_called();
}

#[test]
fn malformed_bearer_is_invalid_token() {
    let gw = hs_gateway();
    for value in [
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer a.b",
        "Bearer ....",
        "Bearer !!!.???.***",
    ] {
        let r = gw.get("/req/x", &[("Authorization", value)]);
        assert_401(&r, "invalid_token", true);
    }
    let r = cookie(&gw, "/req/x", "pc_tok=garbage");
    assert_401(&r, "invalid_token", true);
    gw.up().assert_not_called();
}

#[test]
fn unusable_sub_or_email_is_invalid_token() {
    let gw = hs_gateway();
    let bad: Vec<(&str, Value)> = vec![
        ("sub", json!("abc\r\nX-User-Role: admin")),
        ("sub", json!("bad\u{0}nul")),
        ("sub", json!("jürgen")),
        ("sub", json!("has space")),
        ("sub", json!("a".repeat(257))),
        ("sub", json!(12345)),
        ("email", json!("a@b.test\r\nX-User-Role: admin")),
        ("email", json!("\u{7f}@b.test")),
        ("email", json!(format!("{}@b.test", "e".repeat(260)))),
    ];
    for (claim, value) in bad {
        let c = claims_with(&new_sub(), |m| {
            m.insert(claim.into(), value.clone());
        });
        let t = hs256(&c);
        let r = bearer(&gw, "/req/x", &t);
        assert_eq!(r.status, 401, "{claim}={value}: {}", r.text());
        assert_401(&r, "invalid_token", true);
    }
    gw.up().assert_not_called();
}

#[test]
fn sub_of_256_visible_ascii_bytes_is_accepted() {
    let gw = hs_gateway();
    let sub = "s".repeat(256);
    let c = claims(&sub);
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn token_without_email_injects_only_user_id() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.remove("email");
    });
    let r = bearer(&gw, "/req/x", &hs256(&c));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&r.seen(), Some((&sub, None)));
}

#[test]
fn previous_hs256_secret_is_still_accepted() {
    let tokens = format!(
        "{}\n[[tokens.previous_keys]]\nsecret_env = \"PORTCULLIS_TEST_OLD_SECRET\"\n",
        cfg::HS256
    );
    let old = "an-older-secret-that-is-also-32-bytes-long!!";
    let gw = Gateway::start(
        &config(&tokens, "", ""),
        &[("PORTCULLIS_TEST_OLD_SECRET", old)],
    );
    let sub = new_sub();
    assert_accepted(&gw, &hs256_with(old.as_bytes(), &claims(&sub), None), &sub);
    let sub2 = new_sub();
    assert_accepted(&gw, &token_for(&sub2), &sub2);
    let r = bearer(
        &gw,
        "/req/x",
        &hs256_with(
            b"neither-current-nor-previous-secret-xx",
            &claims(&sub),
            None,
        ),
    );
    assert_401(&r, "invalid_token", true);
}

#[test]
fn unknown_kid_is_invalid_token_on_an_hs256_gateway_too() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(SECRET.as_bytes(), &c, Some("nope")),
        "invalid_token",
    );
}
