//! The per-request cost of the edge, measured from the first day:
//! - one token verification (HS256, EdDSA), ours beside `jsonwebtoken::decode` for reference;
//! - the header policy: `Gateway::admit` (strip, path, route, credential, verify, owner) plus
//!   `prepare_upstream` (credential removed, identity injected) on a realistic request.
//!
//! Run: `cargo bench --bench hot_path`. Figures go in the README.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pingora::http::RequestHeader;
use portcullis::authn::{self, Alg, KeySet, VerifyKey};
use portcullis::config::{self, Env};
use portcullis::edge::gateway::{Decision, Gateway};
use portcullis::edge::proxy::RequestCtx;
use serde::{Deserialize, Serialize};

const SECRET: &str = "bench-secret-bench-secret-bench-secret!";
const ED_PEM: &[u8] = include_bytes!("../tests/fixtures/keys/ed25519.pem");
const SUB: &str = "5f0c3c9e-4d7a-4a43-9c1e-0b8f1f2d3e4a";

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    email: String,
    iat: u64,
    exp: u64,
    jti: String,
    iss: String,
    aud: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Claims {
    let n = now();
    Claims {
        sub: SUB.into(),
        email: "ada@example.com".into(),
        iat: n,
        exp: n + 3600,
        jti: "6b1d1a44-3e4b-4d3f-8a2b-1c2d3e4f5a6b".into(),
        iss: "portcullis".into(),
        aud: "portcullis".into(),
    }
}

fn key_set(key: VerifyKey) -> KeySet {
    KeySet::new(vec![key], "portcullis".into(), "portcullis".into(), 30)
}

fn verification(c: &mut Criterion) {
    let hs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let hs_keys = key_set(VerifyKey::hmac(None, SECRET.as_bytes()));
    let mut ed_header = Header::new(Algorithm::EdDSA);
    ed_header.kid = Some("k1".into());
    let ed_token = jsonwebtoken::encode(
        &ed_header,
        &claims(),
        &EncodingKey::from_ed_pem(ED_PEM).unwrap(),
    )
    .unwrap();
    let ed_keys =
        key_set(VerifyKey::from_private_pem(Some("k1".into()), Alg::EdDSA, ED_PEM).unwrap());
    let t = now();

    assert!(authn::verify(hs_token.as_bytes(), &hs_keys, t).is_ok());
    assert!(authn::verify(ed_token.as_bytes(), &ed_keys, t).is_ok());

    let mut g = c.benchmark_group("verify");
    g.bench_function("portcullis_hs256", |b| {
        b.iter(|| authn::verify(black_box(hs_token.as_bytes()), &hs_keys, t).unwrap());
    });
    g.bench_function("portcullis_eddsa", |b| {
        b.iter(|| authn::verify(black_box(ed_token.as_bytes()), &ed_keys, t).unwrap());
    });
    let jwt_key = DecodingKey::from_secret(SECRET.as_bytes());
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["portcullis"]);
    validation.set_audience(&["portcullis"]);
    g.bench_function("jsonwebtoken_decode_hs256", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<Claims>(black_box(&hs_token), &jwt_key, &validation).unwrap()
        });
    });
    g.finish();
}

struct BenchEnv;
impl Env for BenchEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "BENCH_SECRET").then(|| SECRET.to_owned())
    }
}

fn header_policy(c: &mut Criterion) {
    let conf = config::parse(
        r#"
[tokens]
secret_env = "BENCH_SECRET"
[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]
[[route]]
path = "/api/{user_id}/tasks/{*rest}"
upstream = "app"
auth = "required"
owner = "user_id"
[[route]]
path = "/public/{*rest}"
upstream = "app"
auth = "public"
"#,
        &BenchEnv,
    )
    .unwrap();
    let upstreams = portcullis::edge::upstream::build(&conf.upstreams, &[]).unwrap();
    let parts = portcullis::assemble(&conf).unwrap();
    let gateway = Gateway {
        metrics: portcullis::edge::route_metrics::TableMetrics::new(&parts.routes),
        routes: parts.routes,
        upstreams,
        auth: std::sync::Arc::new(portcullis::authn::Authenticator::new(
            parts.keys,
            std::sync::Arc::default(),
            std::sync::Arc::default(),
        )),
        cookie_name: conf.cookie.name,
        cors: parts.cors,
        identity: None,
        server_timing: false,
        forward_auth: None,
        asserter: parts.asserter,
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let path = format!("/api/{SUB}/tasks/42?page=2");
    let mut template = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    for (n, v) in [
        ("host", "app.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("authorization", &format!("Bearer {token}")),
        ("x-request-id", "req-0123456789"),
    ] {
        template.append_header(n, v).unwrap();
    }
    let public_path = "/public/assets/app.js";
    let mut public = RequestHeader::build("GET", public_path.as_bytes(), None).unwrap();
    public.append_header("host", "app.example.com").unwrap();
    let t = now();

    let mut g = c.benchmark_group("edge");
    g.bench_function("required_route_admit_and_prepare", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |req| {
                let mut ctx = RequestCtx::new();
                assert!(matches!(gateway.admit(req, &mut ctx, t), Decision::Proxy));
                gateway.prepare_upstream(req, &ctx);
            },
            criterion::BatchSize::SmallInput,
        );
    });
    g.bench_function("public_route_admit_and_prepare", |b| {
        b.iter_batched_ref(
            || public.clone(),
            |req| {
                let mut ctx = RequestCtx::new();
                assert!(matches!(gateway.admit(req, &mut ctx, t), Decision::Proxy));
                gateway.prepare_upstream(req, &ctx);
            },
            criterion::BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, verification, header_policy);
criterion_main!(benches);
