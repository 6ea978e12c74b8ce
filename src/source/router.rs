//! Which cache reads a path: one cache per set of credentials (and per child namespace), chosen for every path by
//! the access rules. The gate that admits volumes at Create and Mount (their path's rule and engine) lives here too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::access::{AccessRules, AuthScope, Grant};
use crate::fs::{RouteError, SecretRouter};
use crate::lease::keeper::LeaseRoute;
use crate::lease::reaper::ReapSources;
use crate::mount::MountPlan;
use crate::names::VaultPath;
use crate::source::cache::SecretCache;
use crate::source::{DynamicKind, SecretSource, SourceError};
use crate::volumes::{VolumeError, VolumeGate};

/// Makes the cache for a child namespace of a scope: a view of the same backend and login in that namespace.
pub type NamespaceCacheFactory =
    Box<dyn Fn(AuthScope, &str) -> Result<SecretCache, String> + Send + Sync>;

/// The secret caches volumes read through: one per set of credentials (the `[vault]` ones, and each access rule
/// with its own), and one per volume `namespace` option under those, made on first use and shared by every volume
/// reading with the same credentials in the same namespace. Which cache reads a path is decided per path, by the
/// access rules ([`VolumeRouter`]).
pub struct VolumeCaches {
    /// Swapped whole by a reload; every read takes the rules in force at that moment.
    access: std::sync::RwLock<Arc<AccessRules>>,
    roots: HashMap<AuthScope, Arc<SecretCache>>,
    namespaced: Mutex<HashMap<(AuthScope, String), Arc<SecretCache>>>,
    factory: NamespaceCacheFactory,
    /// The lifetimes a reload set, for namespace caches made after it (the factory has the start's).
    reloaded_times: Mutex<Option<crate::source::cache::CacheTimes>>,
}

impl std::fmt::Debug for VolumeCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeCaches")
            .field("scopes", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl VolumeCaches {
    pub fn new(
        access: AccessRules,
        roots: HashMap<AuthScope, Arc<SecretCache>>,
        factory: NamespaceCacheFactory,
    ) -> Self {
        VolumeCaches {
            access: std::sync::RwLock::new(Arc::new(access)),
            roots,
            namespaced: Mutex::new(HashMap::new()),
            factory,
            reloaded_times: Mutex::new(None),
        }
    }

    /// The access rules in force.
    pub fn access(&self) -> Arc<AccessRules> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `access` in force for every read from now on (a reload). The caller has checked that it names no
    /// credentials these caches were not opened with.
    pub fn set_access(&self, access: AccessRules) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
    }

    /// A reload: every cache, of every scope and namespace, judges its values by `times` from now on.
    pub fn set_times(&self, times: crate::source::cache::CacheTimes) {
        *self
            .reloaded_times
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(times);
        for cache in self.roots.values() {
            cache.set_times(times);
        }
        let namespaced = self.namespaced.lock().unwrap_or_else(|p| p.into_inner());
        for cache in namespaced.values() {
            cache.set_times(times);
        }
    }

    /// A backend with one set of credentials and no namespaces: a volume asking for one is refused with `reason`.
    pub fn single(access: AccessRules, root: Arc<SecretCache>, reason: &'static str) -> Self {
        VolumeCaches::new(
            access,
            HashMap::from([(AuthScope::Default, root)]),
            Box::new(move |_, _| Err(reason.to_owned())),
        )
    }

    /// What a volume reading in `namespace` (`None`: the configured one) reads through: every path it resolves
    /// to is decided by the access rules and read with the credentials of the rule that matched it.
    pub fn router(self: &Arc<Self>, namespace: Option<&str>) -> Arc<VolumeRouter> {
        Arc::new(VolumeRouter {
            caches: self.clone(),
            namespace: namespace.map(str::to_owned),
        })
    }

    /// The cache of `scope` in `namespace`.
    fn cache_of(
        &self,
        scope: AuthScope,
        namespace: Option<&str>,
    ) -> Result<Arc<SecretCache>, String> {
        let root = self
            .roots
            .get(&scope)
            .ok_or_else(|| format!("the credentials of {scope} were not loaded"))?;
        let Some(namespace) = namespace else {
            return Ok(root.clone());
        };
        let mut caches = self.namespaced.lock().unwrap_or_else(|p| p.into_inner());
        let key = (scope, namespace.to_owned());
        if let Some(cache) = caches.get(&key) {
            return Ok(cache.clone());
        }
        let cache = Arc::new(
            (self.factory)(scope, namespace)
                .map_err(|reason| format!("volume option namespace: {reason}"))?,
        );
        if let Some(times) = *self
            .reloaded_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            cache.set_times(times);
        }
        caches.insert(key, cache.clone());
        Ok(cache)
    }
}

#[async_trait::async_trait]
impl VolumeGate for VolumeCaches {
    /// The volume's own path, granted by the rules, must lie in a KV engine. When Vault cannot answer, the engine
    /// is left to the reads, which check it again each time: Create and Mount never wait for Vault.
    async fn admit(&self, plan: &MountPlan, grant: Grant) -> Result<(), VolumeError> {
        let name = &plan.name;
        let cache = self
            .cache_of(grant.scope, plan.parsed.namespace.as_deref())
            .map_err(|reason| VolumeError::Unavailable {
                name: name.to_owned(),
                reason,
            })?;
        // Every read checks the engine again, so a slow Vault is not waited for here: Create and Mount stay quick.
        // A dynamic rule's path must be a minting engine instead (and only pki/issue takes certificate options).
        let check = async {
            if !grant.dynamic {
                return cache.check_served(&plan.path).await;
            }
            match cache.source().check_dynamic(&plan.path).await? {
                DynamicKind::Read if !plan.parsed.pki.is_empty() => Err(SourceError::Refused(
                    "common_name, alt_names, ip_sans and ttl are options of pki/issue volumes"
                        .to_owned(),
                )),
                _ => Ok(()),
            }
        };
        let checked = tokio::time::timeout(ADMIT_ENGINE_CHECK, check)
            .await
            .unwrap_or_else(|_| Err(SourceError::Unavailable("no answer in time".to_owned())));
        match checked {
            Ok(()) => Ok(()),
            Err(SourceError::Refused(reason)) => {
                tracing::warn!(volume = %name, %reason, "volume {name} refused: {reason}");
                Err(VolumeError::NotServed {
                    name: name.to_owned(),
                    reason,
                })
            }
            Err(error) => {
                tracing::info!(volume = %name, %error, "engine not checked now (Vault did not answer); every read checks it");
                Ok(())
            }
        }
    }
}

impl VolumeCaches {
    /// Where a dynamic volume at `path` in `namespace` issues, renews and revokes: decided by the access rules at
    /// every call, so a rule that no longer says `dynamic = true` stops the lease at its next step.
    pub fn lease_route(
        self: &Arc<Self>,
        namespace: Option<&str>,
        path: &VaultPath,
    ) -> Arc<dyn LeaseRoute> {
        Arc::new(DynamicRoute {
            caches: self.clone(),
            namespace: namespace.map(str::to_owned),
            path: path.clone(),
        })
    }
}

/// A dynamic volume's [`LeaseRoute`].
struct DynamicRoute {
    caches: Arc<VolumeCaches>,
    namespace: Option<String>,
    path: VaultPath,
}

impl LeaseRoute for DynamicRoute {
    fn source(&self) -> Result<Arc<dyn SecretSource>, SourceError> {
        let namespace = self.namespace.as_deref();
        let grant = self
            .caches
            .access()
            .decide(namespace, &self.path)
            .map_err(|refusal| SourceError::Refused(refusal.to_string()))?;
        if !grant.dynamic {
            return Err(SourceError::Refused(
                "no access rule with dynamic = true covers this path any more".to_owned(),
            ));
        }
        self.caches
            .cache_of(grant.scope, namespace)
            .map(|cache| cache.source().clone())
            .map_err(SourceError::Unavailable)
    }
}

/// Leases whose holder is gone are revoked with the credentials of the rule covering their volume now, or the
/// driver's own when no rule does any more (revoking never hands anything out).
impl ReapSources for VolumeCaches {
    fn source_for(
        &self,
        namespace: Option<&str>,
        volume: &str,
    ) -> Result<Arc<dyn SecretSource>, SourceError> {
        let scope = VaultPath::from_volume_name(volume)
            .ok()
            .and_then(|path| self.access().decide(namespace, &path).ok())
            .map_or(AuthScope::Default, |grant| grant.scope);
        self.cache_of(scope, namespace)
            .or_else(|_| self.cache_of(AuthScope::Default, namespace))
            .map(|cache| cache.source().clone())
            .map_err(SourceError::Unavailable)
    }
}

/// The longest Create and Mount wait for Vault to say which engine a volume's path is in.
const ADMIT_ENGINE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// One volume's view of [`VolumeCaches`]: decides each path in the volume's namespace.
pub struct VolumeRouter {
    caches: Arc<VolumeCaches>,
    namespace: Option<String>,
}

impl std::fmt::Debug for VolumeRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeRouter")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl SecretRouter for VolumeRouter {
    fn route(&self, path: &VaultPath) -> Result<Arc<SecretCache>, RouteError> {
        let namespace = self.namespace.as_deref();
        let grant = self.caches.access().decide(namespace, path)?;
        self.caches
            .cache_of(grant.scope, namespace)
            .map_err(RouteError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Rule;
    use crate::fs::audit::{Auditor, Outcome, Requester};
    use crate::fs::{FsError, FsOptions, SecretFs, ROOT_INODE};
    use crate::testing::{FixedContainers, MemorySource, RecordingAuditSink};
    use serde_json::json;
    use std::ffi::OsStr;
    use std::time::Duration;

    fn rule(path: &str, allow: bool, own_auth: bool) -> Rule {
        Rule {
            path: path.into(),
            namespace: None,
            allow,
            own_auth,
            dynamic: false,
        }
    }

    fn path(p: &str) -> VaultPath {
        VaultPath::from_volume_name(p).unwrap()
    }

    fn cache(source: &Arc<MemorySource>) -> Arc<SecretCache> {
        Arc::new(SecretCache::new(
            source.clone(),
            Duration::from_secs(30),
            Duration::from_secs(2),
        ))
    }

    /// Two sets of credentials: `[vault]`'s reads everything, app-1's only its own prefix (as Vault would enforce).
    fn sources() -> (Arc<MemorySource>, Arc<MemorySource>) {
        let broad = Arc::new(MemorySource::default());
        broad.put("secret/admin/root", json!({"value": "root-pw"}));
        broad.put(
            "secret/app-1/db",
            json!({"value": "read-with-the-broad-token"}),
        );
        broad.put("secret/shared/x", json!({"value": "shared"}));
        let app1 = Arc::new(MemorySource::default());
        app1.put(
            "secret/app-1/db",
            json!({"value": "read-with-app-1s-own-token", "user": "u"}),
        );
        (broad, app1)
    }

    fn caches(
        rules: Vec<Rule>,
        broad: &Arc<MemorySource>,
        app1: &Arc<MemorySource>,
    ) -> Arc<VolumeCaches> {
        Arc::new(VolumeCaches::new(
            AccessRules::new(rules, "test [[rules]]"),
            HashMap::from([
                (AuthScope::Default, cache(broad)),
                (AuthScope::Rule(1), cache(app1)),
            ]),
            Box::new(|_, _| Err("no namespaces here".to_owned())),
        ))
    }

    /// Audits `fs` into the returned sink, one line per (key, result) per `window`.
    fn audited(fs: &SecretFs, window: Duration) -> RecordingAuditSink {
        let sink = RecordingAuditSink::default();
        fs.set_auditor(Auditor::new(
            "secret",
            window,
            Box::new(FixedContainers(HashMap::new())),
            Box::new(sink.clone()),
        ));
        sink
    }

    async fn cat(
        fs: &SecretFs,
        parent: u64,
        name: &str,
        who: Requester,
    ) -> Result<String, FsError> {
        let attr = fs.lookup_audited(parent, OsStr::new(name), who).await?;
        let bytes = fs.read_audited(attr.ino, 0, 4096, who)?;
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// Issue 11's attack, through the filesystem core: a volume over a parent path reads each secret as the rule of
    /// that secret's own path decides.
    #[tokio::test]
    async fn every_path_below_a_parent_volume_is_decided_by_its_own_rule() {
        let (broad, app1) = sources();
        let caches = caches(
            vec![
                rule("secret/admin", false, false),
                rule("secret/app-1", true, true),
                rule("secret", true, false),
            ],
            &broad,
            &app1,
        );
        let fs = SecretFs::routed(path("secret"), caches.router(None), FsOptions::default());
        let sink = audited(&fs, Duration::from_secs(60));
        let who = Requester { pid: 9, uid: 0 };

        // The deny rule holds below the parent: the folder and everything in it, in every view.
        let admin = fs
            .lookup_audited(ROOT_INODE, OsStr::new("admin"), who)
            .await;
        assert!(
            matches!(admin, Err(FsError::Refused { ref reason }) if reason.contains("rules[0]")),
            "{admin:?}"
        );
        assert_eq!(admin.unwrap_err().errno(), crate::fs::libc_errno::EACCES);
        let reads_before = broad.reads();
        for name in ["admin#", "admin@1", "admin#value"] {
            assert!(matches!(
                fs.lookup_audited(ROOT_INODE, OsStr::new(name), who).await,
                Err(FsError::Refused { .. })
            ));
        }
        assert_eq!(
            broad.reads(),
            reads_before,
            "a refused path never reaches Vault"
        );

        // app-1's secrets are read with app-1's own credentials, not the broad ones, also through the parent.
        let app = fs.lookup(ROOT_INODE, OsStr::new("app-1")).await.unwrap();
        assert_eq!(
            cat(&fs, app.ino, "db", who).await.unwrap(),
            "read-with-app-1s-own-token"
        );
        assert_eq!(cat(&fs, app.ino, "db#user", who).await.unwrap(), "u");
        assert_eq!(
            broad.reads(),
            reads_before,
            "the broad credentials never read app-1's secrets"
        );
        let shared = fs.lookup(ROOT_INODE, OsStr::new("shared")).await.unwrap();
        assert_eq!(cat(&fs, shared.ino, "x", who).await.unwrap(), "shared");

        let records = sink.records();
        let denied: Vec<_> = records
            .iter()
            .filter(|r| r.outcome == Outcome::Denied)
            .collect();
        assert!(!denied.is_empty());
        assert!(
            denied.iter().all(|r| r.key.starts_with("secret/admin")
                && r.reason
                    .as_deref()
                    .is_some_and(|why| why.contains("rules[0]"))),
            "{denied:?}"
        );
    }

    #[tokio::test]
    async fn a_nested_secret_is_read_with_the_credentials_of_its_rule() {
        let (broad, app1) = sources();
        let caches = caches(
            vec![
                rule("secret/admin", false, false),
                rule("secret/app-1", true, true),
                rule("secret", true, false),
            ],
            &broad,
            &app1,
        );
        // A volume over `secret/app-1` and one over `secret` resolving `app-1/db` read the same, with app-1's login.
        let own = SecretFs::routed(
            path("secret/app-1"),
            caches.router(None),
            FsOptions::default(),
        );
        let who = Requester { pid: 9, uid: 0 };
        assert_eq!(
            cat(&own, ROOT_INODE, "db", who).await.unwrap(),
            "read-with-app-1s-own-token"
        );
        let router = caches.router(None);
        let via_parent = router.route(&path("secret/app-1/db")).unwrap();
        assert_eq!(
            via_parent
                .read(&path("secret/app-1/db"))
                .await
                .unwrap()
                .render(&crate::names::View::Default)
                .unwrap()
                .to_vec(),
            b"read-with-app-1s-own-token"
        );
        assert_eq!(
            broad.reads(),
            0,
            "the broad credentials never read app-1's secrets"
        );
    }

    /// Create's and Mount's decision on volume `name`: its rule, then the gate's engine check.
    async fn admit(
        caches: &VolumeCaches,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<(), VolumeError> {
        let options = namespace
            .map(|ns| (String::from("namespace"), ns.to_owned()))
            .into_iter()
            .collect();
        let record = crate::volumes::VolumeRecord {
            name: name.to_owned(),
            options,
            created_at: String::new(),
        };
        let plan = crate::volumes::plan_mount(&record, "/run/test/mount".into())?;
        let grant = crate::volumes::decide_access(&caches.access(), &plan)?;
        caches.admit(&plan, grant).await
    }

    #[tokio::test]
    async fn a_namespace_no_rule_names_is_refused_and_the_gate_refuses_non_kv_engines() {
        let (broad, app1) = sources();
        let caches = caches(
            vec![
                rule("secret/admin", false, false),
                rule("secret/app-1", true, true),
            ],
            &broad,
            &app1,
        );
        let router = caches.router(Some("finance"));
        assert!(matches!(
            router.route(&path("secret/app-1/db")),
            Err(RouteError::Refused(_))
        ));
        let refused = admit(&caches, "secret/app-1", Some("finance")).await;
        assert!(
            matches!(refused, Err(VolumeError::Refused(_))),
            "{refused:?}"
        );
        assert!(admit(&caches, "secret/app-1", None).await.is_ok());

        app1.set_failure(Some(SourceError::Refused(
            "cubbyhole/ is Vault's cubbyhole path".into(),
        )));
        let refused = admit(&caches, "secret/app-1", None).await;
        assert!(
            matches!(refused, Err(VolumeError::NotServed { ref reason, .. }) if reason.contains("cubbyhole")),
            "{refused:?}"
        );
        // Vault not answering does not keep a volume from being created or mounted: reads check again.
        app1.set_failure(Some(SourceError::Unavailable("sealed".into())));
        assert!(admit(&caches, "secret/app-1", None).await.is_ok());
    }

    #[test]
    fn an_open_is_audited_once_at_whatever_offset_it_starts() {
        let source = Arc::new(MemorySource::default());
        source.put("secret/big", json!({"value": "x".repeat(10_000)}));
        let fs = SecretFs::new(path("secret"), cache(&source), FsOptions::default());
        let sink = audited(&fs, Duration::ZERO);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let attr = runtime
            .block_on(fs.lookup(ROOT_INODE, OsStr::new("big")))
            .unwrap();
        let reader = Requester { pid: 5, uid: 0 };
        // A first read in the middle of the file is an open of its own.
        fs.read_audited(attr.ino, 8192, 4096, reader).unwrap();
        assert_eq!(sink.records().len(), 1);
        // Reading on from where it stopped is the same open.
        fs.read_audited(attr.ino, 10_000, 4096, reader).unwrap();
        assert_eq!(sink.records().len(), 1);
        // Back at the start, or another process: new opens.
        fs.read_audited(attr.ino, 0, 4096, reader).unwrap();
        fs.read_audited(attr.ino, 4096, 4096, reader).unwrap();
        fs.read_audited(attr.ino, 4096, 4096, Requester { pid: 6, uid: 0 })
            .unwrap();
        assert_eq!(sink.records().len(), 3);
    }
}
