//! The product's dynamic-secrets path (`VaultSource`'s issue/renew/revoke and the `LeaseKeeper`) against a real
//! OpenBao with its database engine on a real PostgreSQL, and its PKI engine. Missing OpenBao, PostgreSQL or
//! openssl is a failure, not a skip: run scripts/setup-test-host.sh.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker_volume_libsecret::lease::keeper::{Holder, LeaseKeeper, LeaseRoute};
use docker_volume_libsecret::lease::{IssueRequest, LeasePolicy};
use docker_volume_libsecret::names::View;
use docker_volume_libsecret::source::vault::VaultSource;
use docker_volume_libsecret::source::{DynamicKind, Secret, SecretSource, SourceError};
use support::openbao::OpenBao;
use support::pki_check::{cert_matches_key, verifies_against};
use support::postgres::Postgres;
use support::vault_client::{path, token_config};

struct Route(Arc<VaultSource>);
impl LeaseRoute for Route {
    fn source(&self) -> Result<Arc<dyn SecretSource>, SourceError> {
        Ok(self.0.clone())
    }
}

fn source(bao: &OpenBao) -> Arc<VaultSource> {
    Arc::new(VaultSource::new(&token_config(&bao.addr(), bao.root_token())).unwrap())
}

async fn keeper(
    vault: &Arc<VaultSource>,
    volume: &str,
    params: BTreeMap<String, String>,
    policy: LeasePolicy,
) -> Arc<LeaseKeeper> {
    LeaseKeeper::start(
        Holder {
            volume: volume.into(),
            holder: "container-a".into(),
            namespace: None,
        },
        IssueRequest {
            path: path(volume),
            params,
        },
        Arc::new(Route(vault.clone())),
        policy,
        None,
    )
    .await
    .unwrap()
}

/// Field `name` of one issued response.
fn text_of(secret: &Secret, name: &str) -> String {
    String::from_utf8(secret.render(&View::Field(name.into())).unwrap().to_vec()).unwrap()
}

fn field(keeper: &LeaseKeeper, name: &str) -> String {
    text_of(&keeper.current().unwrap().0, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_minting_engines_are_dynamic_and_pki_only_through_issue() {
    let bao = OpenBao::start();
    let pg = Postgres::start();
    bao.enable_database(&pg, "app", "1h", "2h");
    bao.enable_pki("web", "1h", false);
    let vault = source(&bao);
    assert_eq!(
        vault.check_dynamic(&path("database/creds/app")).await,
        Ok(DynamicKind::Read)
    );
    assert_eq!(
        vault.check_dynamic(&path("pki/issue/web")).await,
        Ok(DynamicKind::PkiIssue)
    );
    for refused in [
        "secret/app",
        "pki/cert/ca",
        "cubbyhole/x",
        "sys/leases/lookup",
        "auth/token/create",
    ] {
        let answer = vault.check_dynamic(&path(refused)).await;
        assert!(
            matches!(answer, Err(SourceError::Refused(_))),
            "{refused}: {answer:?}"
        );
    }
    // And the KV side still refuses the dynamic engines, as before.
    assert!(matches!(
        vault.check_served(&path("database/creds/app")).await,
        Err(SourceError::Refused(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_credential_logs_in_is_renewed_and_reissued_and_is_revoked_at_the_end() {
    let bao = OpenBao::start();
    let pg = Postgres::start();
    // Short terms so the whole life (renewals, the max TTL, a successor) fits in the test.
    bao.enable_database(&pg, "app", "3s", "9s");
    let vault = source(&bao);
    let mark = bao.audit_len();
    let policy = LeasePolicy {
        reissue_grace: Duration::from_secs(1),
        ..LeasePolicy::default()
    };
    let keeper = keeper(&vault, "database/creds/app", BTreeMap::new(), policy).await;
    let first = field(&keeper, "username");
    assert!(pg.can_log_in(&first, &field(&keeper, "password")));
    assert_eq!(bao.leases("database/creds/app/").len(), 1);
    // Whatever moment a client reads, the username and password it gets log in together.
    let started = Instant::now();
    let mut users = vec![first.clone()];
    while started.elapsed() < Duration::from_secs(20) {
        let (secret, _) = keeper.current().unwrap();
        let user = text_of(&secret, "username");
        let password = text_of(&secret, "password");
        assert!(
            pg.can_log_in(&user, &password),
            "{user} after {:?}",
            started.elapsed()
        );
        if users.last() != Some(&user) {
            users.push(user);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        users.len() >= 2,
        "re-issued before the 9 s max TTL: {users:?}"
    );
    let requests = bao.audit_requests_since(mark);
    let renewals = requests
        .iter()
        .filter(|r| r.path == "sys/leases/renew")
        .count();
    let issues = requests
        .iter()
        .filter(|r| r.path == "database/creds/app")
        .count();
    assert!(renewals >= 2, "renewals are in the audit log: {renewals}");
    assert_eq!(
        issues,
        users.len(),
        "one issue per credential, none per read"
    );
    keeper.finish().await;
    support::wait_until("every lease revoked", Duration::from_secs(10), || {
        bao.leases("database/creds/app/").is_empty()
    });
    for user in &users {
        support::wait_until("the role dropped", Duration::from_secs(10), || {
            !pg.role_exists(user)
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pki_certificate_matches_its_key_verifies_and_is_reissued_before_it_expires() {
    let bao = OpenBao::start();
    let ca = bao.enable_pki("web", "1h", false);
    let vault = source(&bao);
    let params = BTreeMap::from([
        ("common_name".to_owned(), "web.internal".to_owned()),
        ("ttl".to_owned(), "6s".to_owned()),
    ]);
    let keeper = keeper(&vault, "pki/issue/web", params, LeasePolicy::default()).await;
    let first = field(&keeper, "certificate");
    assert!(cert_matches_key(&first, &field(&keeper, "private_key")));
    assert!(verifies_against(&ca, &first));
    assert!(verifies_against(&field(&keeper, "issuing_ca"), &first));
    support::wait_until(
        "a new certificate before the 6 s one expires",
        Duration::from_secs(10),
        || field(&keeper, "certificate") != first,
    );
    let (secret, _) = keeper.current().unwrap();
    assert!(cert_matches_key(
        &text_of(&secret, "certificate"),
        &text_of(&secret, "private_key")
    ));
    keeper.finish().await;
}
