//! CONTRACT section 4, `X-Request-Id`: kept when sane, made otherwise, on every response.

use super::*;

#[test]
fn sane_request_id_is_passed_through_and_echoed() {
    let gw = hs_gateway();
    let sane_128 = "a".repeat(128);
    for id in [
        "Req-1_a.b:c/d+e=f",
        "x",
        sane_128.as_str(),
        "0123456789ABCDEFabcdef",
    ] {
        let r = gw.get("/public/x", &[("X-Request-Id", id)]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.request_id(),
            Some(id),
            "response echoes the client's sane id"
        );
        assert_eq!(
            r.seen().all("x-request-id"),
            vec![id.to_string()],
            "upstream gets exactly that id"
        );
    }
}

#[test]
fn insane_request_id_is_replaced_by_a_generated_one() {
    let gw = hs_gateway();
    let long = "a".repeat(129);
    for id in [
        long.as_str(),
        "has space",
        "semi;colon",
        "<script>",
        "quote\"d",
        "comma,sep",
        "star*",
        "caf\u{e9}",
        "",
    ] {
        let r = gw.get("/public/x", &[("X-Request-Id", id)]);
        assert_eq!(r.status, 200, "{id:?}: {}", r.text());
        let echoed = r.request_id().expect("x-request-id").to_string();
        assert_ne!(echoed, id, "insane id {id:?} must be replaced");
        assert!(
            is_generated_request_id(&echoed),
            "generated id is a UUID: {echoed:?}"
        );
        assert_eq!(
            r.seen().all("x-request-id"),
            vec![echoed],
            "upstream gets the generated id"
        );
    }
}

#[test]
fn absent_request_id_is_generated_and_reaches_upstream() {
    let gw = hs_gateway();
    let r1 = gw.get("/public/x", &[]);
    let r2 = gw.get("/public/x", &[]);
    let id1 = r1.request_id().expect("x-request-id").to_string();
    let id2 = r2.request_id().expect("x-request-id").to_string();
    assert!(is_generated_request_id(&id1), "{id1}");
    assert_ne!(id1, id2, "each request gets its own id");
    assert_eq!(r1.seen().all("x-request-id"), vec![id1]);
}

/// (path, headers, expected status)
type Case<'a> = (String, Vec<(&'a str, String)>, u16);

#[test]
fn request_id_is_on_gateway_made_responses() {
    let gw = hs_gateway();
    let other = new_sub();
    let t = token_for(&new_sub());
    let cases: Vec<Case> = vec![
        ("/req/x".into(), vec![], 401),
        (
            "/req/x".into(),
            vec![("Authorization", "Bearer junk".into())],
            401,
        ),
        ("/nowhere".into(), vec![], 404),
        ("/public/%2F".into(), vec![], 400),
        // Refused before the header policy ran: the framing guard and the credential check.
        (
            "/public/x".into(),
            vec![
                ("Content-Length", "0".into()),
                ("Content-Length", "0".into()),
            ],
            400,
        ),
        (
            "/req/x".into(),
            vec![
                ("Authorization", format!("Bearer {t}")),
                ("Authorization", format!("Bearer {t}")),
            ],
            400,
        ),
        (
            format!("/api/{other}/tasks/x"),
            vec![("Authorization", format!("Bearer {t}"))],
            403,
        ),
    ];
    for (path, headers, status) in &cases {
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = gw.get(path, &h);
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        let id = r
            .request_id()
            .unwrap_or_else(|| panic!("{path}: no x-request-id on {status}"));
        assert!(is_generated_request_id(id), "{path}: generated id {id:?}");
        h.push(("X-Request-Id", "trace-42"));
        let r = gw.get(path, &h);
        assert_eq!(r.status, *status);
        assert_eq!(
            r.request_id(),
            Some("trace-42"),
            "{path}: sane id echoed on {status}"
        );
    }
    gw.up().assert_not_called();
}

#[test]
fn repeated_request_id_headers_reach_the_upstream_as_one() {
    let gw = hs_gateway();
    let r = gw.get(
        "/public/x",
        &[("X-Request-Id", "one"), ("X-Request-Id", "two")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.request_id().expect("x-request-id").to_string();
    assert_eq!(
        r.headers_all("x-request-id").len(),
        1,
        "one id in the response"
    );
    assert_eq!(
        r.seen().all("x-request-id"),
        vec![echoed],
        "one id upstream, the echoed one"
    );
}
