//! The harness of dynamic secrets against the real servers, without the product: OpenBao's database engine handing
//! out roles of a real PostgreSQL 15 (`tests/support/postgres.rs`), its PKI engine (checked with the `openssl` CLI,
//! `tests/support/pki_check.rs`), and the lease and token-role helpers of `tests/support/openbao.rs`. The product
//! tests that serve `database/creds/<role>` and `pki/issue/<role>` as volumes build on these. OpenBao, PostgreSQL
//! or openssl missing is a failure, not a skip: run scripts/setup-test-host.sh.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::openbao::OpenBao;
use support::pki_check::{cert_matches_key, pem_blocks, verifies_against};
use support::postgres::Postgres;
use support::wait_until;

#[test]
fn database_creds_log_in_are_listed_as_leases_and_revocation_drops_the_role() {
    let pg = Postgres::start();
    assert!(pg.can_log_in("postgres", pg.admin_password()));
    assert!(!pg.can_log_in("postgres", "not-the-password"));
    let bao = OpenBao::start();
    bao.enable_database(&pg, "app", "1m", "5m");
    // verify_connection: a wrong password is refused when the connection is written, not at the first read.
    let (status, reply) = bao.request(
        "POST",
        "database/config/bad",
        None,
        Some(bao.root_token()),
        Some(&json!({
            "plugin_name": "postgresql-database-plugin",
            "allowed_roles": "*",
            "connection_url": pg.connection_url_template(),
            "username": "postgres",
            "password": "not-the-password",
            "verify_connection": true,
        })),
    );
    assert_eq!(status, 400, "{reply}");
    // A second role keeps the engine and the connection.
    bao.enable_database(&pg, "report", "1m", "5m");

    let creds = bao.call("GET", "database/creds/app", None, Value::Null);
    let username = creds["data"]["username"].as_str().unwrap().to_owned();
    let password = creds["data"]["password"].as_str().unwrap().to_owned();
    let lease_id = creds["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(creds["renewable"], true, "{creds}");
    assert_eq!(creds["lease_duration"], 60, "{creds}");
    assert!(lease_id.starts_with("database/creds/app/"), "{lease_id}");
    assert!(pg.role_exists(&username), "{username} not in pg_roles");
    assert!(
        pg.can_log_in(&username, &password),
        "{username} cannot log in"
    );
    assert!(!pg.can_log_in(&username, "wrong"));

    let other = bao.call("GET", "database/creds/report", None, Value::Null);
    let other_user = other["data"]["username"].as_str().unwrap().to_owned();
    assert_ne!(other_user, username);

    let suffix = lease_id.strip_prefix("database/creds/app/").unwrap();
    assert_eq!(bao.leases("database/creds/app/"), vec![suffix.to_owned()]);
    assert_eq!(bao.leases("database/creds/app"), vec![suffix.to_owned()]);
    assert_eq!(bao.leases("database/creds/report/").len(), 1);
    assert_eq!(bao.leases("database/creds/none/"), Vec::<String>::new());
    let ttl = bao.lease_ttl(&lease_id).unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    assert_eq!(bao.lease_ttl("database/creds/app/no-such-lease"), None);

    bao.call(
        "PUT",
        "sys/leases/revoke",
        None,
        json!({ "lease_id": lease_id }),
    );
    wait_until(
        "the revoked role to leave pg_roles",
        Duration::from_secs(10),
        || !pg.role_exists(&username),
    );
    assert!(!pg.can_log_in(&username, &password));
    assert_eq!(bao.leases("database/creds/app/"), Vec::<String>::new());
    assert_eq!(bao.lease_ttl(&lease_id), None);
    // Revoking a lease that is gone is not an error.
    bao.revoke_lease(&lease_id);
    // The other role's credential is untouched.
    assert!(pg.role_exists(&other_user));
    assert_eq!(pg.roles_like(&other_user), vec![other_user.clone()]);
}

#[test]
fn a_database_lease_past_its_max_ttl_is_revoked_and_the_role_dropped() {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    bao.enable_database(&pg, "short", "2s", "2s");
    let creds = bao.call("GET", "database/creds/short", None, Value::Null);
    let username = creds["data"]["username"].as_str().unwrap().to_owned();
    let lease_id = creds["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(creds["lease_duration"], 2, "{creds}");
    assert!(pg.role_exists(&username));
    wait_until(
        "the expired lease's role to leave pg_roles",
        Duration::from_secs(10),
        || !pg.role_exists(&username),
    );
    assert_eq!(bao.lease_ttl(&lease_id), None);
    assert!(bao.leases("database/creds/short/").is_empty());
}

#[test]
fn pki_issue_gives_a_chain_that_verifies_and_a_matching_key_with_a_lease() {
    let bao = OpenBao::start();
    let ca = bao.enable_pki("web", "1h", true);
    assert_eq!(pem_blocks(&ca).len(), 1, "{ca}");
    let issued = bao.call(
        "POST",
        "pki/issue/web",
        None,
        json!({ "common_name": "web.internal", "ip_sans": "127.0.0.1", "ttl": "20s" }),
    );
    let data = &issued["data"];
    let cert = data["certificate"].as_str().unwrap();
    let key = data["private_key"].as_str().unwrap();
    let issuing_ca = data["issuing_ca"].as_str().unwrap();
    let chain: Vec<&str> = data["ca_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(issuing_ca.trim(), ca.trim());
    assert_eq!(chain.len(), 1, "{issued}");
    assert_eq!(chain[0].trim(), ca.trim());
    assert!(data["serial_number"].is_string(), "{issued}");
    assert!(data["expiration"].is_i64(), "{issued}");

    assert!(verifies_against(&ca, cert));
    assert!(verifies_against(&chain.concat(), cert));
    assert!(cert_matches_key(cert, key));

    let lease_id = issued["lease_id"].as_str().unwrap();
    assert!(lease_id.starts_with("pki/issue/web/"), "{issued}");
    // The lease ends with the certificate's NotAfter, so it can already be a second short of the ttl asked for.
    let duration = issued["lease_duration"].as_i64().unwrap();
    assert!((19..=20).contains(&duration), "{issued}");
    assert_eq!(issued["renewable"], false, "{issued}");
    let ttl = bao.lease_ttl(lease_id).unwrap();
    assert!((1..=20).contains(&ttl), "ttl {ttl}");
    assert_eq!(bao.leases("pki/issue/web/").len(), 1);

    // A second role on the same CA, without leases: certificate only, lease_duration 0.
    let ca_again = bao.enable_pki("nolease", "1h", false);
    assert_eq!(ca_again.trim(), ca.trim());
    let plain = bao.call(
        "POST",
        "pki/issue/nolease",
        None,
        json!({ "common_name": "db.internal", "ttl": "20s" }),
    );
    assert_eq!(plain["lease_duration"], 0, "{plain}");
    assert_eq!(plain["lease_id"], "", "{plain}");
    assert!(bao.leases("pki/issue/nolease/").is_empty());
    let plain_cert = plain["data"]["certificate"].as_str().unwrap();
    assert!(verifies_against(&ca, plain_cert));
    assert!(cert_matches_key(
        plain_cert,
        plain["data"]["private_key"].as_str().unwrap()
    ));
}

#[test]
fn the_pki_checks_say_no_to_a_foreign_key_and_a_foreign_ca() {
    let first = OpenBao::start();
    let second = OpenBao::start();
    let ca_one = first.enable_pki("web", "1h", false);
    let ca_two = second.enable_pki("web", "1h", false);
    let one = first.call(
        "POST",
        "pki/issue/web",
        None,
        json!({ "common_name": "a.internal" }),
    );
    let two = second.call(
        "POST",
        "pki/issue/web",
        None,
        json!({ "common_name": "a.internal" }),
    );
    let cert_one = one["data"]["certificate"].as_str().unwrap();
    let key_two = two["data"]["private_key"].as_str().unwrap();
    assert!(verifies_against(&ca_one, cert_one));
    assert!(!verifies_against(&ca_two, cert_one));
    assert!(!cert_matches_key(cert_one, key_two));
    assert!(!cert_matches_key(cert_one, "not a key"));
    assert!(!verifies_against(&ca_one, "not a certificate"));
}

#[test]
fn a_token_role_makes_periodic_orphan_tokens_with_its_policies() {
    let bao = OpenBao::start();
    bao.put_policy(
        None,
        "creds",
        r#"path "database/creds/*" { capabilities = ["read"] }"#,
    );
    bao.create_token_role("mounts", &["creds"], "1h", true);
    let role = bao.call("GET", "auth/token/roles/mounts", None, Value::Null);
    assert_eq!(role["data"]["allowed_policies"], json!(["creds"]), "{role}");
    assert_eq!(role["data"]["orphan"], true, "{role}");
    let made = bao.call(
        "POST",
        "auth/token/create/mounts",
        None,
        json!({ "policies": ["creds"] }),
    );
    let token = made["auth"]["client_token"].as_str().unwrap();
    assert_eq!(made["auth"]["orphan"], true, "{made}");
    assert_eq!(made["auth"]["lease_duration"], 3600, "{made}");
    let looked = bao.call("POST", "auth/token/lookup", None, json!({ "token": token }));
    assert_eq!(looked["data"]["role"], "mounts", "{looked}");
    // lookup shows `period: null` even for a periodic token: what tells it apart is that a renewal grants the
    // period whatever increment is asked for (a 1h token renewed with increment 10s gets 10s).
    let (status, renewed) = bao.request(
        "POST",
        "auth/token/renew-self",
        None,
        Some(token),
        Some(&json!({ "increment": "10s" })),
    );
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["auth"]["lease_duration"], 3600, "{renewed}");
    // A policy outside the role's list is refused.
    let (status, reply) = bao.request(
        "POST",
        "auth/token/create/mounts",
        None,
        Some(bao.root_token()),
        Some(&json!({ "policies": ["root"] })),
    );
    assert_eq!(status, 400, "{reply}");
}
