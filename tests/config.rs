//! `portcullis check-config` and `serve` with bad configs, black-box (CONTRACT sections 1-2).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BOUND: Duration = Duration::from_secs(20);

/// A valid config; `{DIR}` and `{KEYS}` are substituted.
const VALID: &str = r#"
[server]
listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"
threads = 2

[store]
url = "sqlite://{DIR}/p.db"
auto_migrate = false

[tokens]
algorithm = "HS256"
secret_env = "PORTCULLIS_TEST_SECRET"
ttl_secs = 3600
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30

[cookie]
name = "portcullis_token"
secure = true
same_site = "Strict"

[password]
bcrypt_cost = 12

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
"#;

const ED_TOKENS: &str = r#"[tokens]
algorithm = "EdDSA"
private_key_file = "{KEYS}/ed25519.pem"
kid = "k1"
"#;

/// HS256 with the test secret: the shared section every test gateway uses.
const HS_TOKENS: &str = common::config::HS256;

/// Result of one `check-config` run.
#[derive(Debug)]
struct Check {
    code: Option<i32>,
    lines: Vec<String>,
    stderr: String,
}

/// Run `check-config` on `config` (placeholders substituted) with the test secret set unless
/// `env` overrides it; `unset` removes variables.
fn check_full(config: &str, env: &[(&str, &str)], unset_secret: bool) -> Check {
    let dir = tempfile::tempdir().unwrap();
    let cfg = render(
        config,
        &[
            ("DIR", dir.path().to_string_lossy().into_owned()),
            ("KEYS", keys_dir().to_string_lossy().into_owned()),
        ],
    );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &cfg).unwrap();
    let mut all_env: Vec<(&str, &str)> = Vec::new();
    if !unset_secret {
        all_env.push((SECRET_ENV, SECRET));
    }
    all_env.extend_from_slice(env);
    let (status, _out, err) = run_bin(
        &["check-config", "--config", path.to_str().unwrap()],
        &all_env,
        dir.path(),
        BOUND,
    );
    Check {
        code: status.code(),
        lines: err
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        stderr: err,
    }
}

fn check(config: &str) -> Check {
    check_full(config, &[], false)
}

/// Exit 1 with exactly one stderr line that mentions one of `keywords` (case-insensitive).
#[track_caller]
fn assert_one_problem(c: &Check, keywords: &[&str]) {
    assert_eq!(
        c.code,
        Some(1),
        "check-config must exit 1; stderr:\n{}",
        c.stderr
    );
    assert_eq!(
        c.lines.len(),
        1,
        "exactly one line for one problem, got:\n{}",
        c.stderr
    );
    let line = c.lines[0].to_lowercase();
    assert!(
        keywords.iter().any(|k| line.contains(&k.to_lowercase())),
        "the line must mention one of {keywords:?}: {:?}",
        c.lines[0]
    );
}

/// Replace `from` by `to` in the valid config (panics when `from` is absent).
fn valid_with(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "test bug: {from:?} not in VALID");
    VALID.replacen(from, to, 1)
}

fn append(extra: &str) -> String {
    format!("{VALID}\n{extra}\n")
}

// ---------------------------------------------------------------------------------------------
// valid configs
// ---------------------------------------------------------------------------------------------

#[test]
fn every_shipped_config_passes_check_config() {
    let conf = manifest_dir().join("conf");
    let mut files: Vec<_> = std::fs::read_dir(&conf)
        .unwrap_or_else(|e| panic!("{}: {e}", conf.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "conf/ holds no *.toml config: nothing shipped to validate"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: toml::Value =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // every secret the file names comes from the environment: provide each one
        let mut names = vec!["BETTER_AUTH_SECRET".to_string()];
        if let Some(t) = doc.get("tokens") {
            if let Some(n) = t.get("secret_env").and_then(|v| v.as_str()) {
                names.push(n.to_string());
            }
            for k in t
                .get("previous_keys")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(n) = k.get("secret_env").and_then(|v| v.as_str()) {
                    names.push(n.to_string());
                }
            }
        }
        let env: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), SECRET)).collect();
        let (status, _out, err) = run_bin(
            &["check-config", "--config", file.to_str().unwrap()],
            &env,
            &manifest_dir(),
            BOUND,
        );
        assert!(
            status.success(),
            "{} must pass check-config ({status}):\n{err}",
            file.display()
        );
    }
}

#[test]
fn minimal_valid_config_passes() {
    let c = check(VALID);
    assert_eq!(
        c.code,
        Some(0),
        "the valid test config must pass:\n{}",
        c.stderr
    );
}

#[test]
fn asymmetric_configs_with_fixture_keys_pass() {
    let ed = valid_with(
        HS_TOKENS,
        &format!(
            "{ED_TOKENS}\n[[tokens.previous_keys]]\nkid = \"k0\"\npublic_key_file = \"{{KEYS}}/ed25519-old.pub.pem\"\n"
        ),
    );
    let c = check(&ed);
    assert_eq!(c.code, Some(0), "EdDSA:\n{}", c.stderr);
    let es = valid_with(
        HS_TOKENS,
        "[tokens]\nalgorithm = \"ES256\"\nprivate_key_file = \"{KEYS}/p256.pem\"\nkid = \"e1\"\n",
    );
    let c = check(&es);
    assert_eq!(c.code, Some(0), "ES256:\n{}", c.stderr);
    let rs = valid_with(
        HS_TOKENS,
        "[tokens]\nalgorithm = \"RS256\"\nprivate_key_file = \"{KEYS}/rsa.pem\"\nkid = \"r1\"\n",
    );
    let c = check(&rs);
    assert_eq!(c.code, Some(0), "RS256:\n{}", c.stderr);
}

#[test]
fn check_config_defaults_to_conf_portcullis_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let cfg = render(
        VALID,
        &[
            ("DIR", dir.path().to_string_lossy().into_owned()),
            ("KEYS", keys_dir().to_string_lossy().into_owned()),
        ],
    );
    std::fs::write(dir.path().join("conf/portcullis.toml"), cfg).unwrap();
    let (status, _, err) = run_bin(
        &["check-config"],
        &[(SECRET_ENV, SECRET)],
        dir.path(),
        BOUND,
    );
    assert!(
        status.success(),
        "check-config without --config reads conf/portcullis.toml:\n{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let (status, _, err) = run_bin(
        &["check-config"],
        &[(SECRET_ENV, SECRET)],
        empty.path(),
        BOUND,
    );
    assert_eq!(
        status.code(),
        Some(1),
        "no conf/portcullis.toml → exit 1:\n{err}"
    );
}

#[test]
fn help_and_version_exit_0() {
    let (status, out, err) = run_bin(&["--version"], &[], &manifest_dir(), BOUND);
    assert!(status.success(), "--version: {err}");
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version: {out:?}"
    );
    let (status, out, err) = run_bin(&["--help"], &[], &manifest_dir(), BOUND);
    assert!(status.success(), "--help: {err}");
    // `migrate` and `demo` belong to the identity/store work and are not pinned here
    for cmd in ["serve", "check-config"] {
        assert!(out.contains(cmd), "--help lists {cmd}: {out}");
    }
}

// ---------------------------------------------------------------------------------------------
// one problem, one line
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_top_level_key_is_rejected() {
    assert_one_problem(&check(&format!("colour = \"red\"\n{VALID}")), &["colour"]);
}

#[test]
fn unknown_section_is_rejected() {
    assert_one_problem(
        &check(&append("[servr]\nlisten = \"127.0.0.1:1\"")),
        &["servr"],
    );
}

#[test]
fn unknown_key_in_server_is_rejected() {
    assert_one_problem(
        &check(&valid_with(
            "threads = 2",
            "threads = 2\nlisen = \"0.0.0.0:80\"",
        )),
        &["lisen"],
    );
}

#[test]
fn unknown_key_in_route_is_rejected() {
    // a typo next to `auth` must not silently pass
    assert_one_problem(
        &check(&valid_with(
            "auth = \"public\"",
            "auth = \"public\"\nauht = \"required\"",
        )),
        &["auht"],
    );
}

#[test]
fn unknown_key_in_tokens_is_rejected() {
    assert_one_problem(
        &check(&valid_with(
            "leeway_secs = 30",
            "leeway_secs = 30\nleway = 5",
        )),
        &["leway"],
    );
}

#[test]
fn unknown_key_in_upstream_is_rejected() {
    assert_one_problem(
        &check(&valid_with(
            "addrs = [\"127.0.0.1:3000\"]",
            "addrs = [\"127.0.0.1:3000\"]\nread_timeout = 5",
        )),
        &["read_timeout"],
    );
}

#[test]
fn request_head_timeout_outside_100_ms_to_10_min_is_rejected() {
    for bad in ["0", "99", "600001"] {
        assert_one_problem(
            &check(&valid_with(
                "threads = 2",
                &format!("threads = 2\nrequest_head_timeout_ms = {bad}"),
            )),
            &["request_head_timeout_ms"],
        );
    }
    let ok = check(&valid_with(
        "threads = 2",
        "threads = 2\nrequest_head_timeout_ms = 100",
    ));
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}

#[test]
fn bad_listen_address_is_rejected() {
    assert_one_problem(
        &check(&valid_with("127.0.0.1:18080", "not-an-address")),
        &["listen", "not-an-address"],
    );
    assert_one_problem(
        &check(&valid_with("127.0.0.1:18080", "127.0.0.1:99999")),
        &["listen", "99999"],
    );
}

#[test]
fn trusted_proxies_must_be_networks_or_addresses() {
    for good in ["10.0.0.0/8", "192.0.2.1", "fd00::/8", "::1", "10.1.2.3/32"] {
        let c = check(&format!(
            "{VALID}\n[rate_limit]\ntrusted_proxies = [\"{good}\"]\n"
        ));
        assert_eq!(c.code, Some(0), "{good}: {}", c.stderr);
    }
    for bad in [
        "10.0.0.0/33",
        "::/129",
        "banana",
        "10.0.0.0/",
        "10.0.0/8",
        "/8",
    ] {
        assert_one_problem(
            &check(&format!(
                "{VALID}\n[rate_limit]\ntrusted_proxies = [\"{bad}\"]\n"
            )),
            &["trusted_proxies"],
        );
    }
}

#[test]
fn bad_admin_listen_address_is_rejected() {
    assert_one_problem(
        &check(&valid_with("127.0.0.1:19090", "nowhere")),
        &["admin_listen", "nowhere"],
    );
}

#[test]
fn route_naming_unknown_upstream_is_rejected() {
    assert_one_problem(
        &check(&append(
            "[[route]]\npath = \"/ghostly/{*rest}\"\nupstream = \"ghost\"\nauth = \"public\"",
        )),
        &["ghost"],
    );
}

#[test]
fn owner_that_is_not_a_path_parameter_is_rejected() {
    assert_one_problem(
        &check(&valid_with("owner = \"user_id\"", "owner = \"uid\"")),
        &["owner", "uid"],
    );
}

#[test]
fn owner_on_a_non_required_route_is_rejected() {
    for auth in ["optional", "public"] {
        let cfg = append(&format!(
            "[[route]]\npath = \"/o/{{user_id}}/x\"\nupstream = \"app\"\nauth = \"{auth}\"\nowner = \"user_id\""
        ));
        assert_one_problem(&check(&cfg), &["owner"]);
    }
}

/// A route at `/r/{*rest}` with `auth` and the rule lines `rules`.
fn rule_route(auth: &str, rules: &str) -> String {
    append(&format!(
        "[[route]]\npath = \"/r/{{*rest}}\"\nupstream = \"app\"\nauth = \"{auth}\"\n{rules}"
    ))
}

#[test]
fn claim_rules_of_every_shape_the_contract_names_pass() {
    for auth in ["required", "optional"] {
        let c = check(&rule_route(
            auth,
            "require = { roles = \"admin\", org = \"acme\" }\nrequire_scopes = [\"tasks:write\", \"a.b/c\"]",
        ));
        assert_eq!(c.code, Some(0), "{auth}: {}", c.stderr);
    }
}

#[test]
fn claim_rules_of_a_wrong_shape_are_config_errors_one_line_each() {
    for (rules, keywords) in [
        ("require = { role = 1 }", &["require.role", "string"][..]),
        (
            "require = { role = [\"a\", \"b\"] }",
            &["require.role", "string"],
        ),
        ("require = { role = { any = \"a\" } }", &["require.role"]),
        ("require = { role = true }", &["require.role"]),
        ("require = { role = \"\" }", &["require.role"]),
        ("require = {}", &["require is empty"]),
        ("require = { exp = \"1\" }", &["require.exp", "number"]),
        (
            "require = { scope = \"a\" }",
            &["require.scope", "require_scopes"],
        ),
        (
            "require = { scp = \"a\" }",
            &["require.scp", "require_scopes"],
        ),
        ("require = \"admin\"", &["require"]),
        ("require_scopes = []", &["require_scopes is empty"]),
        ("require_scopes = [\"a b\"]", &["require_scopes", "spaces"]),
        ("require_scopes = [\"\"]", &["require_scopes"]),
        ("require_scopes = [1]", &["require_scopes", "strings"]),
        ("require_scopes = \"tasks:write\"", &["require_scopes"]),
        ("requires = { role = \"admin\" }", &["requires"]),
    ] {
        let c = check(&rule_route("required", rules));
        assert_one_problem(&c, keywords);
    }
    let many: Vec<String> = (0..33).map(|i| format!("c{i} = \"v\"")).collect();
    let c = check(&rule_route(
        "required",
        &format!("require = {{ {} }}", many.join(", ")),
    ));
    assert_one_problem(&c, &["more than 32"]);
}

#[test]
fn claim_rules_on_a_public_route_are_a_config_error() {
    for rules in ["require = { role = \"admin\" }", "require_scopes = [\"a\"]"] {
        assert_one_problem(&check(&rule_route("public", rules)), &["public"]);
    }
}

#[test]
fn forward_auth_keys_are_checked() {
    let on = |extra: &str| append(&format!("[forward_auth]\nenabled = true\n{extra}"));
    assert_eq!(check(&on("")).code, Some(0), "{}", check(&on("")).stderr);
    assert_eq!(
        check(&on(
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\", \"192.168.1.7\"]"
        ))
        .code,
        Some(0)
    );
    assert_one_problem(
        &check(&on("trusted_proxies = [\"10.0.0.0/33\"]")),
        &["forward_auth.trusted_proxies", "CIDR"],
    );
    assert_one_problem(&check(&on("trusted = []")), &["trusted"]);
    assert_one_problem(
        &check(&append(
            "[forward_auth]\nenabled = true\n\n[[route]]\npath = \"/_portcullis/auth/{*rest}\"\nupstream = \"app\"\nauth = \"public\"",
        )),
        &["forward-auth"],
    );
    // Off, the prefix is a path like any other.
    assert_eq!(
        check(&append(
            "[[route]]\npath = \"/_portcullis/auth/{*rest}\"\nupstream = \"app\"\nauth = \"public\"",
        ))
        .code,
        Some(0)
    );
}

#[test]
fn duplicate_route_pattern_is_rejected() {
    assert_one_problem(
        &check(&append(
            "[[route]]\npath = \"/public/{*rest}\"\nupstream = \"app\"\nauth = \"required\"",
        )),
        &["/public/", "duplicate"],
    );
}

#[test]
fn conflicting_route_patterns_are_rejected() {
    let cfg = append(
        "[[route]]\npath = \"/c/{a}\"\nupstream = \"app\"\nauth = \"public\"\n\n\
         [[route]]\npath = \"/c/{b}\"\nupstream = \"app\"\nauth = \"required\"",
    );
    assert_one_problem(&check(&cfg), &["/c/", "conflict"]);
}

#[test]
fn unknown_auth_mode_is_rejected() {
    assert_one_problem(
        &check(&valid_with("auth = \"public\"", "auth = \"sometimes\"")),
        &["sometimes", "auth"],
    );
}

#[test]
fn unknown_or_none_algorithm_is_rejected() {
    // ES384, ES512 and PS256 are trusted from other issuers' JWKS, never signed here.
    for alg in ["none", "HS512", "hs256x", "ES384", "ES512", "PS256"] {
        assert_one_problem(
            &check(&valid_with(
                "algorithm = \"HS256\"",
                &format!("algorithm = \"{alg}\""),
            )),
            &["algorithm", alg],
        );
    }
}

#[test]
fn missing_secret_env_is_rejected() {
    let c = check_full(VALID, &[], true);
    assert_one_problem(&c, &[SECRET_ENV]);
}

#[test]
fn hs256_without_secret_env_key_is_rejected() {
    assert_one_problem(
        &check(&valid_with("secret_env = \"PORTCULLIS_TEST_SECRET\"\n", "")),
        &["secret_env", "secret"],
    );
}

#[test]
fn short_secret_is_rejected_without_echoing_it() {
    let short = "0123456789abcdef0123456789abcde"; // 31 bytes
    assert_eq!(short.len(), 31);
    let c = check_full(VALID, &[(SECRET_ENV, short)], false);
    assert_one_problem(&c, &[SECRET_ENV, "32"]);
    assert!(
        !c.stderr.contains(short),
        "the message must not echo the secret: {}",
        c.stderr
    );
    // exactly 32 bytes is enough
    let ok = "0123456789abcdef0123456789abcdef";
    let c = check_full(VALID, &[(SECRET_ENV, ok)], false);
    assert_eq!(c.code, Some(0), "a 32-byte secret is valid:\n{}", c.stderr);
}

#[test]
fn unreadable_key_file_is_rejected() {
    let cfg = valid_with(
        HS_TOKENS,
        "[tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{DIR}/does-not-exist.pem\"\nkid = \"k1\"\n",
    );
    assert_one_problem(&check(&cfg), &["does-not-exist.pem"]);
}

#[test]
fn unreadable_previous_key_file_is_rejected() {
    let cfg = valid_with(
        HS_TOKENS,
        &format!(
            "{ED_TOKENS}\n[[tokens.previous_keys]]\nkid = \"k0\"\npublic_key_file = \"{{DIR}}/gone.pub.pem\"\n"
        ),
    );
    assert_one_problem(&check(&cfg), &["gone.pub.pem"]);
}

/// A key file naming a FIFO (or `/dev/stdin`) blocked `check-config`
/// for ever (opening it waits for a writer) and `/dev/zero` was read until memory ran out.
#[test]
fn key_files_that_are_fifos_or_devices_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("key.pem");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    for file in [fifo.to_str().unwrap(), "/dev/zero", "/dev/stdin", "/tmp"] {
        let cfg = valid_with(
            HS_TOKENS,
            &format!(
                "[tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{file}\"\nkid = \"k1\"\n"
            ),
        );
        let started = Instant::now();
        let c = check(&cfg);
        assert_one_problem(&c, &["not a regular file"]);
        assert!(c.lines[0].contains(file), "{:?}", c.lines[0]);
        assert!(started.elapsed() < Duration::from_secs(10), "{file}");
    }
}

#[test]
fn a_key_file_larger_than_a_mebibyte_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 2 << 20]).unwrap();
    let cfg = valid_with(
        HS_TOKENS,
        &format!(
            "{ED_TOKENS}\n[[tokens.previous_keys]]\nkid = \"k0\"\npublic_key_file = \"{}\"\n",
            big.display()
        ),
    );
    assert_one_problem(&check(&cfg), &["larger than 1024 KiB"]);
}

#[test]
fn a_config_path_that_is_a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("portcullis.toml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let (status, _out, err) = run_bin(
        &["check-config", "--config", fifo.to_str().unwrap()],
        &[(SECRET_ENV, SECRET)],
        dir.path(),
        BOUND,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn asymmetric_algorithm_without_private_key_file_is_rejected() {
    let cfg = valid_with(HS_TOKENS, "[tokens]\nalgorithm = \"EdDSA\"\nkid = \"k1\"\n");
    assert_one_problem(&check(&cfg), &["private_key_file", "key"]);
}

#[test]
fn key_file_of_the_wrong_type_is_rejected() {
    for (alg, file) in [
        ("EdDSA", "p256.pem"),
        ("ES256", "ed25519.pem"),
        ("RS256", "p256.pem"),
        ("EdDSA", "rsa.pem"),
        ("EdDSA", "ed25519.pub.pem"),
    ] {
        let cfg = valid_with(
            HS_TOKENS,
            &format!(
                "[tokens]\nalgorithm = \"{alg}\"\nprivate_key_file = \"{{KEYS}}/{file}\"\nkid = \"k1\"\n"
            ),
        );
        let c = check(&cfg);
        assert_eq!(
            c.code,
            Some(1),
            "{alg} with {file} must be rejected:\n{}",
            c.stderr
        );
        assert_one_problem(&c, &[file, alg]);
    }
}

#[test]
fn bcrypt_cost_below_10_is_rejected() {
    assert_one_problem(
        &check(&valid_with("bcrypt_cost = 12", "bcrypt_cost = 9")),
        &["bcrypt_cost"],
    );
    let c = check(&valid_with("bcrypt_cost = 12", "bcrypt_cost = 10"));
    assert_eq!(c.code, Some(0), "cost 10 is allowed:\n{}", c.stderr);
}

#[test]
fn bad_same_site_is_rejected() {
    assert_one_problem(
        &check(&valid_with(
            "same_site = \"Strict\"",
            "same_site = \"Bogus\"",
        )),
        &["same_site", "bogus"],
    );
}

#[test]
fn toml_syntax_error_is_one_line() {
    assert_one_problem(
        &check(&format!("{VALID}\n[[route]\npath = ")),
        &["toml", "line", "parse", "expected"],
    );
}

#[test]
fn missing_config_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let (status, _, err) = run_bin(
        &["check-config", "--config", missing.to_str().unwrap()],
        &[(SECRET_ENV, SECRET)],
        dir.path(),
        BOUND,
    );
    assert_eq!(status.code(), Some(1), "{err}");
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("nope.toml"), "names the file: {err}");
}

#[test]
fn several_problems_give_several_lines() {
    let cfg = append(
        "[[route]]\npath = \"/ghostly/{*rest}\"\nupstream = \"ghost\"\nauth = \"public\"\n\n\
         [[route]]\npath = \"/o/{user_id}/x\"\nupstream = \"app\"\nauth = \"optional\"\nowner = \"user_id\"",
    )
    .replace("bcrypt_cost = 12", "bcrypt_cost = 9");
    let c = check_full(&cfg, &[], true); // and no secret either
    assert_eq!(c.code, Some(1), "{}", c.stderr);
    assert!(
        c.lines.len() >= 4,
        "one line per problem (4 problems), got:\n{}",
        c.stderr
    );
    let all = c.stderr.to_lowercase();
    for k in ["bcrypt_cost", "ghost", "owner", &SECRET_ENV.to_lowercase()] {
        assert!(all.contains(k), "a line must mention {k}:\n{}", c.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// [[issuer]]: checked offline (check-config never fetches a JWKS)
// ---------------------------------------------------------------------------------------------

/// A complete `[[issuer]]` whose JWKS server does not exist: check-config must not need it.
const ISSUER: &str = r#"
[[issuer]]
name = "better-auth"
jwks_url = "https://auth.invalid/api/auth/jwks"
issuer = "https://app.example.com"
audience = "https://app.example.com"
user_id_claim = "sub"
email_claim = "email"
refresh_secs = 300
min_refresh_secs = 30
timeout_ms = 5000
"#;

fn with_issuer(from: &str, to: &str) -> String {
    assert!(ISSUER.contains(from), "test bug: {from:?} not in ISSUER");
    append(&ISSUER.replacen(from, to, 1))
}

#[test]
fn an_issuer_passes_without_its_jwks_server_and_with_defaults() {
    let c = check(&append(ISSUER));
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    // Only the four contract keys: claims, refresh and timeout take their defaults.
    let minimal = append(
        "[[issuer]]\nname = \"ba\"\njwks_url = \"http://localhost:3000/api/auth/jwks\"\n\
         issuer = \"http://localhost:3000\"\naudience = \"http://localhost:3000\"\n",
    );
    let c = check(&minimal);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
}

#[test]
fn unknown_key_in_issuer_is_rejected() {
    assert_one_problem(
        &check(&with_issuer(
            "timeout_ms = 5000",
            "timeout_ms = 5000\nrefresh = 60",
        )),
        &["refresh"],
    );
}

#[test]
fn issuer_refresh_bounds_are_checked() {
    for (from, to, keyword) in [
        ("refresh_secs = 300", "refresh_secs = 0", "refresh_secs"),
        ("refresh_secs = 300", "refresh_secs = 86401", "refresh_secs"),
        (
            "min_refresh_secs = 30",
            "min_refresh_secs = 0",
            "min_refresh_secs",
        ),
        (
            "min_refresh_secs = 30",
            "min_refresh_secs = 301",
            "min_refresh_secs",
        ),
        ("timeout_ms = 5000", "timeout_ms = 0", "timeout_ms"),
        ("timeout_ms = 5000", "timeout_ms = 600000", "timeout_ms"),
        // A negative number is a syntax-level error: one line naming the value and where it is.
        ("refresh_secs = 300", "refresh_secs = -1", "`-1`"),
    ] {
        assert_one_problem(&check(&with_issuer(from, to)), &[keyword]);
    }
}

#[test]
fn issuer_jwks_url_must_be_https_except_on_loopback() {
    for url in [
        "http://auth.example.com/jwks",
        "ftp://auth.example.com/jwks",
        "https://user:pw@auth.example.com/jwks",
        "not a url",
    ] {
        assert_one_problem(
            &check(&with_issuer("https://auth.invalid/api/auth/jwks", url)),
            &["jwks_url"],
        );
    }
    let c = check(&with_issuer(
        "https://auth.invalid/api/auth/jwks",
        "http://127.0.0.1:3000/api/auth/jwks",
    ));
    assert_eq!(c.code, Some(0), "{}", c.stderr);
}

#[test]
fn credentials_in_a_jwks_url_are_refused_without_being_echoed() {
    let c = check(&with_issuer(
        "https://auth.invalid/api/auth/jwks",
        "https://svc:hunter2-jwks-secret@auth.example.com/jwks",
    ));
    assert_one_problem(&c, &["jwks_url", "credentials"]);
    assert!(!c.stderr.contains("hunter2-jwks-secret"), "{}", c.stderr);
}

#[test]
fn an_issuer_cannot_share_our_iss_or_another_issuers() {
    assert_one_problem(
        &check(&with_issuer(
            "issuer = \"https://app.example.com\"",
            "issuer = \"portcullis\"",
        )),
        &["tokens.issuer"],
    );
    let twice = format!(
        "{}\n{}",
        append(ISSUER),
        ISSUER.replace("name = \"better-auth\"", "name = \"other\"")
    );
    assert_one_problem(&check(&twice), &["already"]);
    let same_name = format!(
        "{}\n{}",
        append(ISSUER),
        ISSUER.replace(
            "issuer = \"https://app.example.com\"",
            "issuer = \"https://x.example.com\""
        )
    );
    assert_one_problem(&check(&same_name), &["defined twice"]);
}

#[test]
fn empty_issuer_fields_are_rejected() {
    assert_one_problem(
        &check(&with_issuer(
            "user_id_claim = \"sub\"",
            "user_id_claim = \"\"",
        )),
        &["user_id_claim"],
    );
}

// ---------------------------------------------------------------------------------------------
// serve refuses bad configs without binding anything
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_serve_refuses(config: &str, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = render(
        config,
        &[
            ("DIR", dir.path().to_string_lossy().into_owned()),
            ("KEYS", keys_dir().to_string_lossy().into_owned()),
        ],
    )
    .replace("127.0.0.1:18080", &listen.to_string())
    .replace("127.0.0.1:19090", &admin.to_string());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &cfg).unwrap();
    let err_path = dir.path().join("stderr.log");
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove(SECRET_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut bound = Vec::new();
    let status = loop {
        for a in [listen, admin] {
            if TcpStream::connect_timeout(&a, Duration::from_millis(50)).is_ok()
                && !bound.contains(&a)
            {
                bound.push(a);
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve with a bad config must exit quickly\nstderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        !status.success(),
        "serve with a bad config must exit non-zero\nstderr:\n{err}"
    );
    assert!(
        bound.is_empty(),
        "serve with a bad config bound {bound:?}\nstderr:\n{err}"
    );
    assert!(!err.trim().is_empty(), "serve must say why it refuses");
}

#[test]
fn serve_with_missing_secret_exits_nonzero_without_binding() {
    assert_serve_refuses(VALID, &[]);
}

#[test]
fn serve_with_short_secret_exits_nonzero_without_binding() {
    assert_serve_refuses(VALID, &[(SECRET_ENV, "too-short")]);
}

#[test]
fn serve_with_semantic_errors_exits_nonzero_without_binding() {
    assert_serve_refuses(
        &valid_with("owner = \"user_id\"", "owner = \"nope\""),
        &[(SECRET_ENV, SECRET)],
    );
    assert_serve_refuses(
        &valid_with(
            HS_TOKENS,
            "[tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{KEYS}/p256.pem\"\nkid = \"k1\"\n",
        ),
        &[(SECRET_ENV, SECRET)],
    );
    assert_serve_refuses(&format!("bogus = 1\n{VALID}"), &[(SECRET_ENV, SECRET)]);
}

#[test]
fn check_config_never_binds_or_serves() {
    // a valid config whose ports are free: check-config validates and exits, nothing listens
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = render(VALID, &[("DIR", dir.path().to_string_lossy().into_owned())])
        .replace("127.0.0.1:18080", &listen.to_string());
    let path = dir.path().join("p.toml");
    std::fs::write(&path, cfg).unwrap();
    let (status, _, err) = run_bin(
        &["check-config", "--config", path.to_str().unwrap()],
        &[(SECRET_ENV, SECRET)],
        Path::new(dir.path()),
        BOUND,
    );
    assert!(status.success(), "{err}");
    assert!(TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err());
}

#[test]
fn serve_with_the_public_port_taken_exits_nonzero_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let admin = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             [store]\nurl = \"sqlite://{}/p.db\"\n[tokens]\nsecret_env = \"PORTCULLIS_TEST_SECRET\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("PORTCULLIS_TEST_SECRET", common::SECRET)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "serve must not run without its public port"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("cannot be bound"),
        "{stderr}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_err(),
        "the admin port must not be left serving"
    );
    drop(taken);
}

/// The first `serve` log line (the SQLite migration), with stderr on `stderr`: a terminal's
/// reading end (`pty`) or a pipe.
fn first_log_line(stderr: Stdio, pty: Option<std::fs::File>) -> String {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = VALID
        .replace("{DIR}", &dir.path().to_string_lossy())
        .replace("auto_migrate = false", "auto_migrate = true")
        .replace("127.0.0.1:18080", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:19090", &format!("127.0.0.1:{}", free_port()));
    let path = dir.path().join("p.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env(SECRET_ENV, SECRET)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let reader: Box<dyn std::io::Read + Send> = match pty {
        Some(master) => Box::new(master),
        None => Box::new(child.stderr.take().unwrap()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if line.contains("migration") && tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(BOUND);
    let _ = child.kill();
    let _ = child.wait();
    line.expect("a migration line within the bound")
}

/// CONTRACT 14: without `server.log_format`, a person at a terminal reads pretty lines and a
/// log collector reading a pipe gets JSON.
#[test]
fn without_log_format_a_terminal_gets_pretty_lines_and_a_pipe_json() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().expect("a UTF-8 pty name"))
        .expect("the terminal's other end");
    let pretty = first_log_line(Stdio::from(slave), Some(std::fs::File::from(master)));
    assert!(
        !pretty.trim_start().starts_with('{') && pretty.contains("INFO"),
        "a terminal: {pretty}"
    );
    assert!(
        !pretty.contains("portcullis::"),
        "no module paths: {pretty}"
    );
    let json = first_log_line(Stdio::piped(), None);
    let v: serde_json::Value = serde_json::from_str(&json).expect("a JSON line on a pipe");
    assert_eq!(v["level"], "INFO", "{json}");
}
