//! `docker-volume-libsecret check-config`, the binary against real OpenBao: a valid config with a rule of its own
//! AppRole logs in with each set of credentials, prints each token's policies and what each rule allows, revokes
//! the tokens it logged in with, and exits 0; a rejected secret ID, an unknown key or a missing file exits non-zero
//! naming what to fix, and no credential is ever printed.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::{Path, PathBuf};

use serde_json::json;
use support::driver::run_once;
use support::openbao::OpenBao;
use support::root_only_file;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

fn check(config: &Path) -> (i32, String) {
    let (code, out) = run_once(&["check-config", "--config", config.to_str().unwrap()], &[]);
    OUTPUTS.with(|outputs| outputs.borrow_mut().push(out.clone()));
    (code, out)
}

#[test]
fn check_config_logs_in_with_every_rules_credentials_and_names_what_to_fix() {
    let bao = OpenBao::start();
    bao.put_policy(
        None,
        "app-1",
        r#"path "secret/data/app-1/*" { capabilities = ["read"] }"#,
    );
    bao.put_policy(
        None,
        "shared",
        r#"path "secret/*" { capabilities = ["read", "list"] }"#,
    );
    let app1 = bao.approle(None, "app-1", &["app-1"]);
    let shared = bao.approle(None, "shared", &["shared"]);
    bao.kv_put(None, "secret", "app-1/db", json!({"value": "v"}));
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, value: &str| root_only_file(dir.path(), name, value);
    let config_text = |app_secret: &Path| {
        format!(
            r#"
[vault]
addr = "{addr}"
auth = "approle"
timeout = "5s"
[vault.approle]
role_id_file = "{shared_role}"
secret_id_file = "{shared_secret}"

[[rules]]
path = "secret/admin"
allow = false

[[rules]]
path = "secret/app-1"
auth = "approle"
approle = {{ role_id_file = "{app_role}", secret_id_file = "{app_secret}" }}

[[rules]]
path = "secret"
"#,
            addr = bao.addr(),
            shared_role = file("shared.role-id", &shared.role_id).display(),
            shared_secret = file("shared.secret-id", &shared.secret_id).display(),
            app_role = file("app-1.role-id", &app1.role_id).display(),
            app_secret = app_secret.display(),
        )
    };
    let good_secret = file("app-1.secret-id", &app1.secret_id);
    let config = write_config(dir.path(), &config_text(&good_secret));

    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    for line in [
        format!("ok    {}: valid", config.display()),
        format!(
            "ok    [vault] (approle): logged in to {}; policies default, shared;",
            bao.addr()
        ),
        format!(
            "ok    rule 2 secret/app-1 (approle): logged in to {}; policies app-1, default;",
            bao.addr()
        ),
        "rule  1: secret/admin refuses".to_owned(),
        "rule  2: secret/app-1 allows KV secrets, read with rule 2 secret/app-1 (approle)"
            .to_owned(),
        "rule  3: secret allows KV secrets, read with [vault] (approle)".to_owned(),
        "config OK".to_owned(),
    ] {
        assert!(out.contains(&line), "{line:?} is not in:\n{out}");
    }
    // The tokens it logged in with are revoked: checking leaves nothing behind in Vault.
    assert!(
        bao.live_token_accessors_issued_at("auth/approle/login")
            .is_empty(),
        "check-config left tokens alive"
    );

    // A rejected secret ID: named, with the rule, and the whole check fails.
    let wrong = file("wrong.secret-id", "00000000-0000-0000-0000-000000000000");
    let config = write_config(dir.path(), &config_text(&wrong));
    let (code, out) = check(&config);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("FAIL  rule 2 secret/app-1 (approle): Vault at") && out.contains("rejected"),
        "{out}"
    );
    assert!(out.contains("ok    [vault] (approle): logged in"), "{out}");
    assert!(out.contains("config NOT OK"), "{out}");

    // A careless edit: an unknown key is named with its file, and nothing logs in.
    let config = write_config(
        dir.path(),
        &format!("{}\ncache_tll = \"5s\"\n", config_text(&good_secret)),
    );
    let (code, out) = check(&config);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("FAIL  invalid configuration") && out.contains("cache_tll"),
        "{out}"
    );
    assert!(out.contains(&config.display().to_string()), "{out}");

    let (code, out) = check(&dir.path().join("absent.toml"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("absent.toml"), "{out}");

    let printed = OUTPUTS.with(|outputs| outputs.borrow().join("\n"));
    for secret in [
        app1.secret_id.as_str(),
        shared.secret_id.as_str(),
        bao.root_token(),
    ] {
        assert!(
            !printed.contains(secret),
            "a credential was printed:\n{printed}"
        );
    }
}

thread_local! {
    /// Everything `check` printed in this test's thread.
    static OUTPUTS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}
