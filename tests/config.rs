//! Config validation: a table test over `tests/data/invalid/*.toml` (each names the error kinds it must produce on
//! its first line, `# expect: kind ...`), and the CLI contract (`check-config`, exit 64, env overrides, YAML).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use oidc_authz::config::Config;

fn expected_kinds(text: &str) -> BTreeSet<String> {
    let first = text.lines().next().unwrap_or_default();
    let list = first
        .strip_prefix("# expect:")
        .unwrap_or_else(|| panic!("first line must be `# expect: ...`"));
    list.split_whitespace().map(str::to_string).collect()
}

#[test]
fn invalid_configs_report_exactly_their_error_kinds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let want = expected_kinds(&text);
        let err = match Config::load(&path) {
            Ok(_) => panic!("{} should be invalid", path.display()),
            Err(e) => e,
        };
        let got: BTreeSet<String> = err.0.iter().map(|e| e.kind().to_string()).collect();
        assert_eq!(got, want, "{}:\n{err}", path.display());
    }
    assert!(
        seen >= 8,
        "expected the invalid-config table, found {seen} files"
    );
}

#[test]
fn every_unknown_key_is_listed_not_just_the_first() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/invalid/unknown-keys.toml");
    let err = Config::load(&path).unwrap_err().to_string();
    for key in [
        "server.grpc_adr",
        "providers.okta.clientid",
        "policies.api.scope_required",
        "routes[0].hostz",
        "extra",
    ] {
        assert!(err.contains(key), "{key} not reported in:\n{err}");
    }
}

/// `check-config` of `tests/data/invalid/NAME`: it exits 64; its stderr.
fn check_config_refuses(name: &str) -> String {
    let bad = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/invalid")
        .join(name);
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{name}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oidc-authz"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OIDC_AUTHZ_") {
            c.env_remove(k);
        }
    }
    c
}

const VALID: &str = r#"
[providers.okta]
issuer = "https://dev-123.okta.com/oauth2/default"
client_id = "0oa"
client_secret_file = "SECRET_FILE"
audiences = ["api://default"]
[policies.api]
provider = "okta"
auth_methods = ["bearer"]
[[routes]]
path_prefix = "/api"
policy = "api"
"#;

fn valid_file(dir: &Path) -> std::path::PathBuf {
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cr3t-from-file\n").unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, VALID.replace("SECRET_FILE", secret.to_str().unwrap())).unwrap();
    cfg
}

#[test]
fn check_config_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = valid_file(dir.path());
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // OIDC_AUTHZ_CONFIG names the file
    let out = bin()
        .arg("check-config")
        .env("OIDC_AUTHZ_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    let stderr = check_config_refuses("unknown-names.toml");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .count(),
        4,
        "{stderr}"
    );

    let out = bin()
        .args(["check-config", "--config", "/nonexistent/oidc-authz.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn names_that_would_break_generated_yaml_are_all_listed_and_exit_64() {
    let stderr = check_config_refuses("names.toml");
    let names: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("- ") && l.contains("the name "))
        .collect();
    assert_eq!(names.len(), 4, "{stderr}");
    // Each shown escaped: the newline of a policy name never starts a line of its own.
    assert!(
        !stderr.lines().any(|l| l.starts_with("http_filters")),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"the name "api\nhttp_filters: []\n#""#),
        "{stderr}"
    );
}

#[test]
fn serve_with_bad_config_exits_64_before_binding() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    drop(held);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[server]\ngrpc_addr = \"127.0.0.1:{port}\"\nnope = 1\n"),
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.nope"));
    // the port was never taken
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn env_overrides_nest_with_double_underscore() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = valid_file(dir.path());
    // the env value lands at providers.okta.issuer
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("OIDC_AUTHZ_PROVIDERS__OKTA__ISSUER", "not a url")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("providers.okta: `issuer`"));
    // the env secret lands at providers.okta.client_secret (and conflicts with the file), never printed
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env(
            "OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET",
            "env-secret-value",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("client_secret or client_secret_file"), "{all}");
    assert!(
        !all.contains("env-secret-value") && !all.contains("s3cr3t-from-file"),
        "{all}"
    );
}

#[test]
fn secret_file_and_env_secret_are_read() {
    unsafe_env_free_load();
}

/// Loads through figment directly (no process env needed) to see the values that reach the typed config.
fn unsafe_env_free_load() {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    let dir = tempfile::tempdir().unwrap();
    let cfg = valid_file(dir.path());
    let c = Config::load(&cfg).unwrap();
    assert_eq!(
        c.providers[0].client_secret.as_ref().unwrap().expose(),
        "s3cr3t-from-file"
    );
    let text = VALID.replace("client_secret_file = \"SECRET_FILE\"", "");
    let fig =
        Figment::from(Toml::string(&text)).merge(("providers.okta.client_secret", "from-env"));
    let c = Config::from_figment(fig).unwrap();
    assert_eq!(
        c.providers[0].client_secret.as_ref().unwrap().expose(),
        "from-env"
    );
}

#[test]
fn yaml_config_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "providers:\n  okta:\n    issuer: https://idp.example.com\n    audiences: [\"api://default\"]\npolicies:\n  api:\n    provider: okta\n    auth_methods: [bearer]\n    scopes_required: [\"a b\", c]\nroutes:\n  - path_prefix: /api\n    policy: api\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_check(cfg: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut c = bin();
    c.args(["check-config", "--config"]).arg(cfg);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), all)
}

#[test]
fn env_secrets_are_verbatim_strings_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        VALID.replace("client_secret_file = \"SECRET_FILE\"", ""),
    )
    .unwrap();
    for secret in ["987654321", "0123", "true", "[1, 2]", "1e3"] {
        let vars = [(
            "OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET".to_string(),
            secret.to_string(),
        )];
        let c = Config::load_with_env(&cfg, vars).unwrap_or_else(|e| panic!("{secret}: {e}"));
        assert_eq!(
            c.providers[0].client_secret.as_ref().unwrap().expose(),
            secret
        );
        let (code, all) = run_check(
            &cfg,
            &[("OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_SECRET", secret)],
        );
        assert_eq!(code, Some(0), "{secret}: {all}");
        assert!(!all.contains(secret), "{all}");
    }
    // other values still read as numbers and booleans
    let vars = [(
        "OIDC_AUTHZ_PROVIDERS__OKTA__LEEWAY_SECS".to_string(),
        "5".to_string(),
    )];
    assert_eq!(
        Config::load_with_env(&cfg, vars).unwrap().providers[0].leeway_secs,
        5
    );
}

#[test]
fn no_error_prints_a_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // a TOML syntax error on the secret's line: the parser would quote the line
        "[providers.okta]\nissuer = \"https://idp.example.com\"\nclient_secret = \"SeCrEt-Value-42\n",
        "[providers.okta]\nissuer = \"https://idp.example.com\"\nclient_secret = SeCrEt-Value-42\n",
        // a secret of the wrong type: the deserializer would name the value
        "[providers.okta]\nissuer = \"https://idp.example.com\"\nclient_secret = 4242424242\n",
        "[policies.p]\nsession_secret = 4242424242\n",
    ];
    for (i, text) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let (code, all) = run_check(&cfg, &[]);
        assert_eq!(code, Some(64), "{all}");
        assert!(
            !all.contains("SeCrEt-Value-42") && !all.contains("4242424242"),
            "case {i}: {all}"
        );
    }
    // the position of a syntax error is still given
    let (_, all) = run_check(&dir.path().join("c0.toml"), &[]);
    assert!(all.contains("line 3"), "{all}");
}

#[test]
fn check_config_warns_but_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    // a session secret published in this repository (the e2e template's), '_' in injected header names,
    // plain http to a remote issuer and callback
    std::fs::write(
        &cfg,
        r#"
[providers.okta]
issuer = "http://idp.example.com"
client_id = "app"
client_secret = "x"
audiences = ["api://default"]
[policies.app]
provider = "okta"
auth_methods = ["bearer", "authorization_code", "session"]
redirect_uri = "http://app.example.com/oauth2/callback"
session_secret = "UePTBxfdBegqNEpqNNov35u26T1aGX35JU71DtqTevA="
upstream_headers_claims = ["sub"]
upstream_headers_names = ["X_User"]
"#,
    )
    .unwrap();
    let (code, all) = run_check(&cfg, &[]);
    assert_eq!(code, Some(0), "{all}");
    for w in [
        "session_secret is published",
        "`x_user` has '_'",
        "issuer uses plain http://",
        "redirect_uri uses plain http://",
    ] {
        assert!(all.contains(w), "missing warning {w:?} in:\n{all}");
    }
    assert!(!all.contains("UePTBxfdBegq"), "{all}");
    // loopback http and a fresh secret: no warnings
    let fresh_secret = {
        use base64::Engine;
        use sha2::Digest;
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(seed.as_bytes()))
    };
    let fresh = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("http://idp.example.com", "http://127.0.0.1:9000")
        .replace("http://app.example.com", "http://localhost:8080")
        .replace(
            "UePTBxfdBegqNEpqNNov35u26T1aGX35JU71DtqTevA=",
            &fresh_secret,
        )
        .replace("X_User", "x-user");
    std::fs::write(&cfg, fresh).unwrap();
    let (code, all) = run_check(&cfg, &[]);
    assert_eq!(code, Some(0), "{all}");
    assert!(!all.contains("warning"), "{all}");
}

#[test]
fn policies_sharing_a_callback_must_be_interchangeable_there() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/invalid/login-hardening.toml");
    let err = Config::load_with_env(&path, []).unwrap_err().to_string();
    // secrets that cannot open each other's cookies, and the same secrets under another session cookie name
    assert!(
        err.contains("policies.two: shares its callback /oauth2/callback with policies.one but has session secrets"),
        "{err}"
    );
    assert!(
        err.contains("policies.three: shares its callback /oauth2/callback with policies.four but has a different session_cookie_name"),
        "{err}"
    );
}

/// `client_auth = "private_key_jwt"` from the CLI: a bad key exits 64 listing every provider's error, without the
/// key; the JWK from the environment (JSON text, verbatim) is accepted and never echoed.
#[test]
fn private_key_jwt_errors_exit_64_and_the_key_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/client-keys/rsa.json"),
    )
    .unwrap();
    let jwk: serde_json::Value = serde_json::from_str(&key).unwrap();
    let d = jwk["d"].as_str().unwrap();
    let cfg = dir.path().join("c.toml");
    let base = VALID.replace(
        "client_secret_file = \"SECRET_FILE\"",
        "client_auth = \"private_key_jwt\"",
    );
    std::fs::write(&cfg, &base).unwrap();
    let (code, all) = run_check(&cfg, &[]);
    assert_eq!(code, Some(64), "{all}");
    assert!(all.contains("needs client_jwk or client_jwk_file"), "{all}");
    // ES256 asked of an RSA key
    let (code, all) = run_check(
        &cfg,
        &[
            ("OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_JWK", key.as_str()),
            ("OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_ALG", "ES256"),
        ],
    );
    assert_eq!(code, Some(64), "{all}");
    assert!(all.contains("does not fit the RSA client_jwk"), "{all}");
    assert!(!all.contains(&d[..12]), "{all}");
    // the same key, fine: exit 0, a warning that it is published, and still no key in the output
    let (code, all) = run_check(
        &cfg,
        &[("OIDC_AUTHZ_PROVIDERS__OKTA__CLIENT_JWK", key.as_str())],
    );
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("client_jwk is a key published"), "{all}");
    assert!(!all.contains(&d[..12]), "{all}");
}

#[test]
fn several_issuers_on_one_policy_errors_name_their_key_paths() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/invalid/providers-list.toml");
    let err = Config::load(&path).unwrap_err();
    let text = err.to_string();
    for want in [
        "policies.both_keys: give `provider` or `providers`, not both",
        "policies.neither: missing `provider`",
        "policies.empty: providers must name at least one provider",
        "policies.twice.providers[2]: provider `okta` is listed twice",
        "policies.unknown.providers[1]: unknown provider `nobody`",
        "policies.same_issuer.providers: providers `okta` and `okta_again` have the same issuer",
        "policies.no_audiences: provider `open` has no `audiences`",
        "policies.any_but_all_have_them: allow_any_audience = true, but every provider in `providers` lists",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert_eq!(err.0.len(), 8, "{text}");
    // valid: the first listed provider is `provider`, every one is in `providers`, in config order; a provider
    // without audiences is fine with allow_any_audience (a warning says the others' audiences are still checked)
    let text = std::fs::read_to_string(&path).unwrap();
    let valid = format!(
        "{}\n[policies.ok]\nproviders = [\"open\", \"entra\", \"okta\"]\nauth_methods = [\"bearer\", \"introspection\"]\nallow_any_audience = true\n",
        &text[..text.find("[policies.both_keys]").unwrap()]
    );
    let cfg = Config::from_toml(&valid).unwrap_or_else(|e| panic!("{e}"));
    let ok = &cfg.policies[cfg.policy_index("ok").unwrap()];
    let names: Vec<&str> = ok
        .providers
        .iter()
        .map(|&i| cfg.providers[i].name.as_str())
        .collect();
    assert_eq!(names, ["open", "entra", "okta"]);
    assert_eq!(cfg.providers[ok.provider].name, "open");
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("policies.ok: allow_any_audience = true accepts any audience only from providers without `audiences` (open)")),
        "{:?}",
        cfg.warnings
    );
}
