//! `oidc-authz import-kong`: the four Okta tutorials' decK files (tests/data/kong) import with exit 0 into configs
//! that the real `check-config` accepts; a security-relevant parameter it cannot map exits 65, bad input 64.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oidc-authz"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kong")
        .join(name)
}

fn import_to(file: &Path, dir: &Path) -> Output {
    bin()
        .arg("import-kong")
        .arg(file)
        .arg("--out")
        .arg(dir)
        .env_remove("OIDC_AUTHZ_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_four_tutorials_import_to_configs_check_config_accepts() {
    for (file, flow) in [
        ("okta-bearer.yaml", "bearer"),
        ("okta-introspection.yaml", "introspection"),
        ("okta-client-credentials.yaml", "client_credentials"),
        ("okta-authorization-code.yaml", "authorization_code"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = import_to(&data(file), dir.path());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: import-kong failed:\n{}",
            text(&out.stderr)
        );
        let config = dir.path().join("oidc-authz.toml");
        let toml = std::fs::read_to_string(&config).unwrap();
        let parsed: toml::Value = toml::from_str(&toml).unwrap();
        let methods: Vec<&str> = parsed["policies"]
            .as_table()
            .unwrap()
            .values()
            .flat_map(|p| p["auth_methods"].as_array().unwrap())
            .filter_map(|m| m.as_str())
            .collect();
        assert!(
            methods.contains(&flow),
            "{file}: no {flow} in {methods:?}\n{toml}"
        );
        // It holds the client secret and session secrets: owner-only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{file}: oidc-authz.toml mode {mode:o}");
        }
        let envoy = std::fs::read_to_string(dir.path().join("envoy-routes.yaml")).unwrap();
        assert!(envoy.contains("context_extensions"), "{file}:\n{envoy}");
        let check = bin()
            .args(["check-config", "--config"])
            .arg(&config)
            .env_remove("OIDC_AUTHZ_CONFIG")
            .output()
            .unwrap();
        assert_eq!(
            check.status.code(),
            Some(0),
            "{file}: check-config refused the import:\n{}\n{toml}",
            text(&check.stderr)
        );
    }
}

#[test]
fn the_login_tutorial_keeps_its_rules_and_never_copies_the_kong_session_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = import_to(&data("okta-authorization-code.yaml"), dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let toml = std::fs::read_to_string(dir.path().join("oidc-authz.toml")).unwrap();
    let cfg = oidc_authz::config::Config::from_toml(&toml).unwrap();
    let p = &cfg.policies[0];
    assert_eq!(p.logout_path.as_deref(), Some("/app/logout"));
    assert!(p.login.is_some());
    assert!(!toml.contains("my-kong-session-secret"));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("sessions do not carry over"), "{stderr}");
    // the public route: ext_authz off in Envoy
    let envoy = std::fs::read_to_string(dir.path().join("envoy-routes.yaml")).unwrap();
    assert!(envoy.contains("disabled: true"), "{envoy}");
}

#[test]
fn an_unmappable_restriction_exits_65_and_bad_input_64() {
    let dir = tempfile::tempdir().unwrap();
    let risky = dir.path().join("risky.yaml");
    let tutorial = std::fs::read_to_string(data("okta-bearer.yaml")).unwrap();
    std::fs::write(
        &risky,
        tutorial.replace(
            "        leeway: 30\n",
            "        leeway: 30\n        max_age: 300\n",
        ),
    )
    .unwrap();
    let out = bin().arg("import-kong").arg(&risky).output().unwrap();
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("max_age"), "{stderr}");
    // both outputs still printed, with separators
    let stdout = text(&out.stdout);
    assert!(stdout.contains("# ===== oidc-authz.toml ====="), "{stdout}");
    assert!(
        stdout.contains("# ===== envoy-routes.yaml ====="),
        "{stdout}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "services: [unclosed\n").unwrap();
    let out = bin().arg("import-kong").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = bin()
        .arg("import-kong")
        .arg(dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
