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

use serde_json::json;

use docker_volume_libsecret::lease::keeper::{Holder, LeaseKeeper, LeaseRoute};
use docker_volume_libsecret::lease::{IssueRequest, LeasePolicy};
use docker_volume_libsecret::names::View;
use docker_volume_libsecret::source::vault::VaultSource;
use docker_volume_libsecret::source::{DynamicKind, Secret, SecretSource, SourceError};
use support::openbao::OpenBao;
use support::pki_check::{cert_matches_key, verifies_against};
use support::postgres::Postgres;
use support::vault_client::{credential_file, path, token_config, token_file_config};

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

/// The token role leases are issued under in these tests, and the policies of the driver's login and of the role's
/// tokens, as the README's "Vault settings for dynamic secrets" describes them.
const LEASE_ROLE: &str = "libsecret-leases";
const LOGIN_POLICY: &str = r#"
path "database/creds/app" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "auth/token/create/libsecret-leases" { capabilities = ["update"] }
path "auth/token/renew-accessor" { capabilities = ["update"] }
"#;
const LEASE_POLICY: &str = r#"path "database/creds/app" { capabilities = ["read"] }"#;
/// The lease tokens' period: short, so the test sees them renewed several times.
const LEASE_PERIOD: &str = "6s";

/// `database/creds/app` with 20 s leases (max 1 min), the policies, and the lease token role (orphan, periodic).
fn dynamic_settings(bao: &OpenBao, pg: &Postgres) {
    bao.enable_database(pg, "app", "20s", "1m");
    bao.put_policy(None, "libsecret-login", LOGIN_POLICY);
    bao.put_policy(None, "libsecret-leases", LEASE_POLICY);
    bao.create_token_role(LEASE_ROLE, &["libsecret-leases"], LEASE_PERIOD, true);
}

/// A login token with the driver's policy that dies after `max_ttl`, renewals or not.
fn login_token(bao: &OpenBao, max_ttl: &str) -> String {
    bao.create_token_with(
        None,
        json!({ "policies": ["libsecret-login"], "ttl": max_ttl, "explicit_max_ttl": max_ttl }),
    )
}

/// Replaces the token file's content at once (written aside and renamed, so the driver never reads half a token).
fn rewrite_token_file(file: &std::path::Path, token: &str) {
    let dir = file.parent().unwrap();
    let aside = credential_file(dir, "token.new", token);
    std::fs::rename(aside, file).unwrap();
}

/// Polls `condition` every 200 ms without blocking the runtime; fails after `deadline`.
async fn eventually(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A driver whose login token (from a token file) has an 8 s max TTL serves a database credential with a 20 s
/// lease; the token file then gets a new token and the first one expires. Returns the source, the keeper, the
/// first credential and its lease ID, and both login tokens.
struct AfterLoginExpired {
    vault: Arc<VaultSource>,
    keeper: Arc<LeaseKeeper>,
    user: String,
    password: String,
    lease_id: String,
    tokens: [String; 2],
}

async fn serve_until_the_login_token_expired(
    bao: &OpenBao,
    pg: &Postgres,
    dir: &std::path::Path,
    lease_token_role: Option<&str>,
) -> AfterLoginExpired {
    dynamic_settings(bao, pg);
    let first_login = login_token(bao, "8s");
    let token_file = credential_file(dir, "token", &first_login);
    let mut config = token_file_config(&bao.addr(), token_file.clone());
    config.lease_token_role = lease_token_role.map(str::to_owned);
    let vault = Arc::new(VaultSource::open(&config).unwrap());
    let policy = LeasePolicy {
        reissue_grace: Duration::from_secs(1),
        ..LeasePolicy::default()
    };
    let keeper = keeper(&vault, "database/creds/app", BTreeMap::new(), policy).await;
    let user = field(&keeper, "username");
    let password = field(&keeper, "password");
    assert!(pg.can_log_in(&user, &password));
    let leases = bao.leases("database/creds/app/");
    assert_eq!(leases.len(), 1, "{leases:?}");
    let lease_id = format!("database/creds/app/{}", leases[0]);
    assert!(bao.lease_ttl(&lease_id).unwrap() > 10, "a 20 s lease");
    // The operator's tool writes the next token before the first one runs out, as Vault Agent's sink does.
    let second_login = bao.create_token(None, &["libsecret-login"], "1h");
    rewrite_token_file(&token_file, &second_login);
    eventually(
        "the first login token to expire",
        Duration::from_secs(15),
        || bao.token_status(&first_login) == 403,
    )
    .await;
    AfterLoginExpired {
        vault,
        keeper,
        user,
        password,
        lease_id,
        tokens: [first_login, second_login],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_lease_token_role_the_credential_outlives_a_login_token_with_a_shorter_max_ttl() {
    let bao = OpenBao::start();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mark = bao.audit_len();
    let served = serve_until_the_login_token_expired(&bao, &pg, dir.path(), Some(LEASE_ROLE)).await;
    // Vault revokes an expired token's leases right after it: give that time to happen, were it to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        bao.lease_ttl(&served.lease_id).is_some(),
        "the lease is owned by the lease token, not the expired login token"
    );
    assert!(pg.can_log_in(&served.user, &served.password));
    assert_eq!(
        field(&served.keeper, "username"),
        served.user,
        "not re-issued"
    );
    // Past the lease's first renewal (at 2/3 of 20 s, with the second login token) and several periods of the
    // lease token (renewed at 2/3 of 6 s): the same credential still works.
    while served.keeper.current().is_some()
        && bao
            .audit_requests_since(mark)
            .iter()
            .filter(|r| r.path == "sys/leases/renew")
            .count()
            == 0
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            pg.can_log_in(&served.user, &served.password),
            "the credential works throughout"
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(bao.lease_ttl(&served.lease_id).is_some());
    assert!(pg.can_log_in(&served.user, &served.password));
    assert_eq!(field(&served.keeper, "username"), served.user);
    let requests = bao.audit_requests_since(mark);
    let created = requests
        .iter()
        .filter(|r| r.path == format!("auth/token/create/{LEASE_ROLE}"))
        .count();
    let kept_alive = requests
        .iter()
        .filter(|r| r.path == "auth/token/renew-self")
        .count();
    assert_eq!(created, 1, "one lease token, created once");
    assert!(
        kept_alive >= 3,
        "the lease token renewed every ~4 s: {kept_alive}"
    );
    // The tokens appear nowhere the driver shows.
    let shown = format!("{:?}", served.vault);
    for token in &served.tokens {
        assert!(!shown.contains(token.as_str()), "{shown}");
    }
    // The end: revoked with the login token, although the lease token owns it.
    served.keeper.finish().await;
    eventually("the lease revoked", Duration::from_secs(10), || {
        bao.lease_ttl(&served.lease_id).is_none()
    })
    .await;
    eventually("the role dropped", Duration::from_secs(10), || {
        !pg.role_exists(&served.user)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_lease_token_role_the_lease_dies_with_the_login_token_and_is_reissued() {
    let bao = OpenBao::start();
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let served = serve_until_the_login_token_expired(&bao, &pg, dir.path(), None).await;
    // What the feature prevents: the lease, a child of the login token, is revoked with it, well before its TTL.
    eventually(
        "the lease revoked with its login token",
        Duration::from_secs(10),
        || bao.lease_ttl(&served.lease_id).is_none(),
    )
    .await;
    eventually(
        "the credential dropped with its lease",
        Duration::from_secs(10),
        || !pg.can_log_in(&served.user, &served.password),
    )
    .await;
    // The keeper finds it gone at its next renewal and issues a successor with the new login token.
    eventually("a successor credential", Duration::from_secs(25), || {
        field(&served.keeper, "username") != served.user
    })
    .await;
    let (secret, _) = served.keeper.current().unwrap();
    assert!(pg.can_log_in(&text_of(&secret, "username"), &text_of(&secret, "password")));
    served.keeper.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_driver_keeps_an_earlier_drivers_lease_token_alive_by_accessor() {
    let bao = OpenBao::start();
    let pg = Postgres::start();
    dynamic_settings(&bao, &pg);
    let with_role = |token: &str| {
        let mut config = token_config(&bao.addr(), token);
        config.lease_token_role = Some(LEASE_ROLE.to_owned());
        config
    };
    let request = IssueRequest {
        path: path("database/creds/app"),
        params: BTreeMap::new(),
    };
    // Two earlier drivers each issue a lease and stop; only the first one's lease is renewed by a later driver.
    let earlier_login = login_token(&bao, "1h");
    let earlier = VaultSource::open(&with_role(&earlier_login)).unwrap();
    let adopted = earlier.issue(&request).await.unwrap().lease;
    let other = VaultSource::open(&with_role(&login_token(&bao, "1h"))).unwrap();
    let orphaned = other.issue(&request).await.unwrap().lease;
    let accessor = adopted
        .owner_accessor
        .clone()
        .expect("the owner's accessor");
    assert_ne!(Some(&accessor), orphaned.owner_accessor.as_ref());
    assert_eq!(bao.accessor_status(&accessor), 200);
    let journal_text = serde_json::to_string(&adopted).unwrap();
    assert!(
        !journal_text.contains(earlier_login.as_str())
            && !format!("{adopted:?}").contains(earlier_login.as_str())
    );
    drop(earlier);
    drop(other);
    let later = VaultSource::open(&with_role(&login_token(&bao, "1h"))).unwrap();
    // Three periods of the lease tokens, the lease renewed as the keeper would.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(18) {
        later
            .renew_lease(&adopted, Duration::from_secs(20))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    assert_eq!(
        bao.accessor_status(&accessor),
        200,
        "kept alive by accessor"
    );
    assert!(bao.lease_ttl(&adopted.lease_id).is_some());
    assert!(
        bao.lease_ttl(&orphaned.lease_id).is_none(),
        "a lease token nobody renews expires after its period, and its lease with it"
    );
    later.revoke_lease(&adopted).await.unwrap();
    assert!(bao.lease_ttl(&adopted.lease_id).is_none());
}
