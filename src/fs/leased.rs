//! A dynamic volume's files: the fields of the one response its lease keeper holds, so a certificate and its key,
//! or a username and its password, always come from the same issue. Nothing here asks Vault: a lookup shows what
//! the keeper holds, and a switch to a new lease retires every name at once (new inodes, kernel invalidation).

use std::ffi::OsStr;
use std::sync::Arc;

use super::{FsError, FsOptions, NodeAttr, NodeKey, SecretFs, SecretRouter, ROOT_INODE};
use crate::lease::keeper::LeaseKeeper;
use crate::names::{FileName, SecretRef, VaultPath, View};

/// The view a dynamic volume's file name asks for: `#` is the whole response, any other name one of its fields.
/// Versions, `KEY#FIELD` and names no field can have are not found.
pub(super) fn field_view(text: &str) -> Result<View, FsError> {
    if text == "#" {
        return Ok(View::Json);
    }
    match FileName::parse(text) {
        Ok(FileName {
            key,
            version: None,
            view: View::Default,
        }) => Ok(View::Field(key)),
        _ => Err(FsError::NotFound),
    }
}

impl SecretFs {
    /// A dynamic volume's filesystem, showing what `keeper` holds. The keeper's switches retire every name.
    pub fn leased(
        root: VaultPath,
        router: Arc<dyn SecretRouter>,
        keeper: Arc<LeaseKeeper>,
        options: FsOptions,
    ) -> Arc<SecretFs> {
        let mut fs = SecretFs::routed(root, router, options);
        fs.lease = Some(keeper.clone());
        let fs = Arc::new(fs);
        let weak = Arc::downgrade(&fs);
        keeper.on_switch(Box::new(move || {
            if let Some(fs) = weak.upgrade() {
                let retired = fs.retire_files();
                tracing::info!(volume_path = %fs.root, retired, "new lease served; cached names dropped");
            }
        }));
        fs
    }

    /// The lease keeper of a dynamic volume.
    pub fn lease(&self) -> Option<&Arc<LeaseKeeper>> {
        self.lease.as_ref()
    }

    pub(super) fn resolve_leased(
        &self,
        keeper: &LeaseKeeper,
        parent: u64,
        name: &OsStr,
        view: View,
    ) -> Result<NodeAttr, FsError> {
        // A dynamic volume is flat: its root holds the fields, and nothing else is a directory.
        if parent != ROOT_INODE {
            return Err(FsError::NotFound);
        }
        // Decided at every lookup: a rule that no longer makes the path dynamic refuses the next open.
        keeper.allowed()?;
        let (secret, _generation) = keeper.current().ok_or(FsError::SourceUnavailable)?;
        let content = secret.render(&view).ok_or(FsError::NotFound)?;
        let key = NodeKey::File(SecretRef::latest(self.root.clone()), view);
        let (ino, size) = self
            .inodes()
            .remember(key.clone(), parent, name, Some(content));
        Ok(self.attr(ino, &key, size))
    }

    /// Drops every file name in use, and the kernel's cached entries for them: the next lookup gets a new inode
    /// with the new value, while files already open keep reading the old one to its end. Returns how many.
    fn retire_files(&self) -> usize {
        let retired: Vec<(u64, std::ffi::OsString)> = {
            let mut inodes = self.inodes();
            let files: Vec<(NodeKey, u64)> = inodes
                .current
                .iter()
                .filter(|(key, _)| matches!(key, NodeKey::File(..)))
                .map(|(key, ino)| (key.clone(), *ino))
                .collect();
            files
                .into_iter()
                .filter_map(|(key, ino)| {
                    inodes.current.remove(&key);
                    inodes
                        .nodes
                        .get(&ino)
                        .map(|node| (node.parent, node.name.clone()))
                })
                .collect()
        };
        if let Some(invalidator) = self.invalidator.get() {
            for (parent, name) in &retired {
                invalidator.invalidate_entry(*parent, name);
            }
        }
        retired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Invalidator, RouteError};
    use crate::lease::keeper::{Holder, LeaseRoute};
    use crate::lease::{IssueRequest, LeasePolicy};
    use crate::source::cache::SecretCache;
    use crate::source::{SecretSource, SourceError};
    use crate::testing::FakeEngine;
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// The engine, while `allowed` (a rule reload may take the dynamic rule away).
    struct Switchable {
        engine: Arc<FakeEngine>,
        allowed: AtomicBool,
    }
    impl LeaseRoute for Switchable {
        fn source(&self) -> Result<Arc<dyn SecretSource>, SourceError> {
            if self.allowed.load(Ordering::SeqCst) {
                Ok(self.engine.clone())
            } else {
                Err(SourceError::Refused("no dynamic rule".into()))
            }
        }
    }

    /// A leased filesystem never reads through its router: any read would be a defect.
    struct NoReads;
    impl SecretRouter for NoReads {
        fn route(&self, _: &VaultPath) -> Result<Arc<SecretCache>, RouteError> {
            Err(RouteError::Unavailable(
                "a dynamic volume reads nothing".into(),
            ))
        }
    }

    #[derive(Default, Clone)]
    struct Invalidated(Arc<Mutex<Vec<OsString>>>);
    impl Invalidator for Invalidated {
        fn invalidate_entry(&self, _parent: u64, name: &OsStr) {
            self.0.lock().unwrap().push(name.to_owned());
        }
    }

    async fn leased_fs(ttl: u64, max_ttl: u64) -> (Arc<SecretFs>, Arc<Switchable>, Invalidated) {
        let route = Arc::new(Switchable {
            engine: Arc::new(FakeEngine::new(
                Duration::from_secs(ttl),
                Duration::from_secs(max_ttl),
            )),
            allowed: AtomicBool::new(true),
        });
        let path = VaultPath::from_volume_name("database/creds/app").unwrap();
        let keeper = LeaseKeeper::start(
            Holder {
                volume: "database/creds/app".into(),
                holder: "container-1".into(),
                namespace: None,
            },
            IssueRequest {
                path: path.clone(),
                params: BTreeMap::new(),
            },
            route.clone(),
            LeasePolicy::default(),
            None,
        )
        .await
        .unwrap();
        let fs = SecretFs::leased(path, Arc::new(NoReads), keeper, FsOptions::default());
        let invalidated = Invalidated::default();
        fs.set_invalidator(Box::new(invalidated.clone()));
        (fs, route, invalidated)
    }

    async fn content(fs: &SecretFs, name: &str) -> Result<(u64, String), FsError> {
        let attr = fs.lookup(ROOT_INODE, OsStr::new(name)).await?;
        let bytes = fs.read(attr.ino, 0, 4096)?;
        Ok((attr.ino, String::from_utf8(bytes.to_vec()).unwrap()))
    }

    #[tokio::test(start_paused = true)]
    async fn files_are_the_fields_of_one_issue_and_switch_together_at_a_reissue() {
        let (fs, route, invalidated) = leased_fs(10, 30).await;
        let (user_ino, user) = content(&fs, "username").await.unwrap();
        assert_eq!(user, "user-1");
        assert_eq!(content(&fs, "password").await.unwrap().1, "pass-1");
        let json = content(&fs, "#").await.unwrap().1;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            serde_json::json!({"username": "user-1", "password": "pass-1"})
        );
        for missing in ["nothing", "username@1", "username#x", "a/b"] {
            assert_eq!(
                content(&fs, missing).await.unwrap_err(),
                FsError::NotFound,
                "{missing}"
            );
        }
        // Refreshes and repeated lookups never mint a credential.
        for _ in 0..5 {
            assert_eq!(fs.refresh().await, 0);
            content(&fs, "username").await.unwrap();
        }
        assert_eq!(route.engine.issued(), 1);
        // Past the max TTL's re-issue: every name switches to the new credential, with new inodes, and the
        // kernel is told to drop the names it cached; an inode already open keeps its old content.
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(route.engine.issued(), 2);
        let mut dropped = invalidated.0.lock().unwrap().clone();
        dropped.sort();
        assert_eq!(dropped, ["#", "password", "username"]);
        let (new_ino, user) = content(&fs, "username").await.unwrap();
        assert_ne!(new_ino, user_ino);
        assert_eq!(
            (user, content(&fs, "password").await.unwrap().1),
            ("user-2".to_owned(), "pass-2".to_owned())
        );
        let old = fs.read(user_ino, 0, 4096).unwrap();
        assert_eq!(old.as_slice(), b"user-1");
    }

    #[tokio::test(start_paused = true)]
    async fn every_lookup_asks_the_rules_again() {
        let (fs, route, _) = leased_fs(60, 3600).await;
        content(&fs, "username").await.unwrap();
        route.allowed.store(false, Ordering::SeqCst);
        let refused = content(&fs, "username").await.unwrap_err();
        assert!(matches!(refused, FsError::Refused { .. }), "{refused:?}");
        assert_eq!(refused.errno(), crate::fs::libc_errno::EACCES);
        route.allowed.store(true, Ordering::SeqCst);
        assert_eq!(content(&fs, "username").await.unwrap().1, "user-1");
        assert_eq!(route.engine.issued(), 1);
    }
}
