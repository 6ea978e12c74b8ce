//! Access rules: which Vault paths may be read, in which namespace, and with which credentials.
//!
//! Rules are decided for every secret a lookup resolves to, not only for the volume: the full path that goes to
//! Vault (the volume's prefix joined with the nested name, without `#field` or `@version`) and the namespace it is
//! read in. The first rule that matches both decides. So a volume over `secret` reads `secret/admin/root` only if
//! the rule that matches `secret/admin/root` allows it, and with that rule's credentials: a parent volume neither
//! escapes a deny rule nor borrows broader credentials.
//!
//! A rule's `path` is a prefix (`secret/app-1` matches `secret/app-1` and everything below it, segment by segment)
//! unless it holds a wildcard: then it is a glob over the whole path, where `*` matches within one segment and `**`
//! any number of segments. A rule's `namespace` (a child of `vault.namespace`, as the `namespace` volume option
//! names it) is matched exactly, or as a glob over its segments; a rule without one covers only the configured
//! `vault.namespace`. With no rules at all, every path of the configured namespace is allowed (the original tool's
//! behaviour, with a warning at start), and no other namespace.

use std::fmt;

use crate::names::VaultPath;

/// One rule, as the core needs it (the config adds its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: String,
    /// The child namespace this rule covers; `None`: the configured `vault.namespace` only.
    pub namespace: Option<String>,
    pub allow: bool,
    /// Whether the rule reads with its own credentials rather than the `[vault]` ones.
    pub own_auth: bool,
    /// Whether the paths it allows are dynamic secrets (issued per container, leased), rather than KV.
    pub dynamic: bool,
}

/// Which credentials read a secret: the `[vault]` ones, or those of rule N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthScope {
    Default,
    Rule(usize),
}

impl fmt::Display for AuthScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthScope::Default => f.write_str("[vault]"),
            AuthScope::Rule(index) => write!(f, "rules[{index}]"),
        }
    }
}

/// What was decided for an allowed path: the credentials, and the rule that allowed it (none without rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub scope: AuthScope,
    pub rule: Option<usize>,
    /// The rule says `dynamic = true`: the path is served from a dynamic engine, and only then.
    pub dynamic: bool,
}

/// `" in namespace \"x\""`, or nothing for the configured namespace.
fn in_namespace(namespace: &Option<String>) -> String {
    namespace
        .as_deref()
        .map(|ns| format!(" in namespace {ns:?}"))
        .unwrap_or_default()
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("Vault path {path:?}{ns} is refused by access rule rules[{index}] (path {pattern:?}, allow = false) in {rule_set}", ns = in_namespace(namespace))]
    Denied {
        path: String,
        namespace: Option<String>,
        index: usize,
        pattern: String,
        rule_set: String,
    },
    #[error("Vault path {path:?}{ns} matches no access rule in {rule_set}; the rules allow: {allowed}", ns = in_namespace(namespace))]
    NoRule {
        path: String,
        namespace: Option<String>,
        rule_set: String,
        allowed: String,
    },
    #[error("namespace {namespace:?} is not allowed: no access rule names it (rules without `namespace` cover only vault.namespace); add a [[rules]] entry with namespace = {namespace:?}")]
    NamespaceWithoutRules { namespace: String },
}

impl AccessError {
    /// The rule that refused, for audit lines (`rules[0]`), or why none allowed.
    pub fn rule(&self) -> String {
        match self {
            AccessError::Denied { index, .. } => format!("rules[{index}]"),
            AccessError::NoRule { .. } => "no-rule".to_owned(),
            AccessError::NamespaceWithoutRules { .. } => "no-namespace-rule".to_owned(),
        }
    }
}

/// The ordered rule set.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
    /// Where the rules were configured, for messages (`/etc/docker-volume-libsecret/config.toml [[rules]]`).
    origin: String,
    /// Per rule, what identifies its whole configuration (credentials included), for [`Self::digest_below`];
    /// empty: the rule's own fields.
    fingerprints: Vec<String>,
}

/// Whether `pattern` (a prefix or a glob) covers `path`: matches it or one of its ancestors. Every rule covers what
/// it matches and everything below, so a path gets the same answer whether it is a volume of its own or a secret
/// reached through a parent volume (`secret/team-*` covers `secret/team-a/db` either way).
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_matches('/');
    if !pattern.contains('*') {
        return path == pattern || path.starts_with(&format!("{pattern}/"));
    }
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    (1..=path.len()).any(|depth| {
        path.get(..depth)
            .is_some_and(|ancestor| glob_segments(&pattern, ancestor))
    })
}

/// Whether a rule's namespace covers `namespace` (both `None`: the configured one). Exact, or a glob over segments;
/// never a prefix, so a rule for `team-a` does not cover `team-a/child`.
fn namespace_matches(rule: Option<&str>, namespace: Option<&str>) -> bool {
    match (rule, namespace) {
        (None, None) => true,
        (Some(rule), Some(namespace)) => {
            let rule: Vec<&str> = rule.trim_matches('/').split('/').collect();
            let namespace: Vec<&str> = namespace.trim_matches('/').split('/').collect();
            glob_segments(&rule, &namespace)
        }
        _ => false,
    }
}

/// Whether some path at or below `prefix` could be covered by `pattern`: used to log in, before any read, with every
/// set of credentials a volume may need. It may say yes too often (an unused login), never too rarely.
pub fn may_match_below(pattern: &str, prefix: &str) -> bool {
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let prefix: Vec<&str> = prefix.split('/').collect();
    for (index, segment) in pattern.iter().enumerate() {
        if *segment == "**" {
            return true;
        }
        let Some(name) = prefix.get(index) else {
            // The pattern goes deeper than the prefix: paths below the prefix can still match it.
            return true;
        };
        if !glob_segment(segment, name) {
            return false;
        }
    }
    // The pattern matched the prefix or one of its ancestors: it covers everything below.
    true
}

fn glob_segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| {
            path.get(skip..)
                .is_some_and(|below| glob_segments(rest, below))
        }),
        Some((segment, rest)) => match path.split_first() {
            Some((name, path_rest)) => {
                glob_segment(segment, name) && glob_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

/// `*` within one segment: any run of characters.
fn glob_segment(pattern: &str, name: &str) -> bool {
    let Some((first, after_first)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let (middles, last) = after_first.rsplit_once('*').unwrap_or(("", after_first));
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let Some(mut rest) = name.get(first.len()..name.len() - last.len()) else {
        return false;
    };
    // An empty middle (`**` inside a segment) matches anywhere: nothing to skip.
    for middle in middles.split('*').filter(|middle| !middle.is_empty()) {
        match rest.split_once(middle) {
            Some((_, after)) => rest = after,
            None => return false,
        }
    }
    true
}

impl AccessRules {
    pub fn new(rules: Vec<Rule>, origin: &str) -> Self {
        AccessRules {
            rules,
            origin: origin.to_owned(),
            fingerprints: Vec::new(),
        }
    }

    /// Identifies each rule by `fingerprints` (one per rule, in order: its whole configuration) in digests.
    pub fn with_fingerprints(mut self, fingerprints: Vec<String>) -> Self {
        self.fingerprints = fingerprints;
        self
    }

    /// No rules: everything in the configured namespace is allowed with the `[vault]` credentials.
    pub fn allow_all() -> Self {
        AccessRules::default()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The credentials `path` is read with in `namespace` (a child of `vault.namespace`; `None`: that one), or why
    /// it may not be read. Called for every secret a lookup resolves to, and for a volume's own path.
    pub fn decide(&self, namespace: Option<&str>, path: &VaultPath) -> Result<Grant, AccessError> {
        if self.rules.is_empty() {
            return match namespace {
                None => Ok(Grant {
                    scope: AuthScope::Default,
                    rule: None,
                    dynamic: false,
                }),
                Some(namespace) => Err(AccessError::NamespaceWithoutRules {
                    namespace: namespace.to_owned(),
                }),
            };
        }
        let text = path.as_str();
        let found = self.rules.iter().enumerate().find(|(_, rule)| {
            namespace_matches(rule.namespace.as_deref(), namespace) && matches(&rule.path, text)
        });
        match found {
            Some((index, rule)) if rule.allow => Ok(Grant {
                scope: if rule.own_auth {
                    AuthScope::Rule(index)
                } else {
                    AuthScope::Default
                },
                rule: Some(index),
                dynamic: rule.dynamic,
            }),
            Some((index, rule)) => Err(AccessError::Denied {
                path: text.to_owned(),
                namespace: namespace.map(str::to_owned),
                index,
                pattern: rule.path.clone(),
                rule_set: self.origin.clone(),
            }),
            None => Err(AccessError::NoRule {
                path: text.to_owned(),
                namespace: namespace.map(str::to_owned),
                rule_set: self.origin.clone(),
                allowed: self.describe_allowed(),
            }),
        }
    }

    fn describe_allowed(&self) -> String {
        let allowed: Vec<String> = self
            .rules
            .iter()
            .filter(|rule| rule.allow)
            .map(|rule| match &rule.namespace {
                Some(ns) => format!("{} (namespace {ns})", rule.path),
                None => rule.path.clone(),
            })
            .collect();
        if allowed.is_empty() {
            "nothing".to_owned()
        } else {
            allowed.join(", ")
        }
    }

    /// The rules that may decide a read at or below `prefix` in `namespace`, in order: up to the first that covers
    /// the whole prefix, after which no later rule can match there.
    fn rules_below<'a>(
        &'a self,
        namespace: Option<&'a str>,
        prefix: &'a VaultPath,
    ) -> impl Iterator<Item = (usize, &'a Rule)> + 'a {
        let mut covered = false;
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, rule)| {
                namespace_matches(rule.namespace.as_deref(), namespace)
                    && may_match_below(&rule.path, prefix.as_str())
            })
            .take_while(move |(_, rule)| {
                let take = !covered;
                covered = covered || matches(&rule.path, prefix.as_str());
                take
            })
    }

    /// Every set of credentials a read at or below `prefix` in `namespace` may be decided to use: what a mount unit
    /// logs in with before it serves the volume.
    pub fn scopes_below(&self, namespace: Option<&str>, prefix: &VaultPath) -> Vec<AuthScope> {
        if self.rules.is_empty() {
            return vec![AuthScope::Default];
        }
        let mut scopes = Vec::new();
        for (index, rule) in self.rules_below(namespace, prefix) {
            let scope = if rule.own_auth {
                AuthScope::Rule(index)
            } else {
                AuthScope::Default
            };
            if rule.allow && !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        scopes
    }

    /// A digest of the rules that decide reads at or below `prefix` in `namespace`. A mount unit started under
    /// other rules has another digest: a restarted driver does not adopt it, so the rules in force are the ones
    /// every read is decided by. Rules that cannot match below the prefix do not count, so editing them leaves the
    /// unit alone.
    pub fn digest_below(&self, namespace: Option<&str>, prefix: &VaultPath) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(namespace.unwrap_or("").as_bytes());
        for (index, rule) in self.rules_below(namespace, prefix) {
            let identity = match self.fingerprints.get(index) {
                Some(fingerprint) => fingerprint.clone(),
                None => format!("{rule:?}"),
            };
            // Order counts (the first match decides), positions elsewhere in the file do not.
            hasher.update(format!("\0{identity}").as_bytes());
        }
        hasher
            .finalize()
            .iter()
            .take(8)
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> VaultPath {
        VaultPath::from_volume_name(p).unwrap()
    }

    fn rule(path: &str, allow: bool, own_auth: bool) -> Rule {
        Rule {
            path: path.into(),
            namespace: None,
            allow,
            own_auth,
            dynamic: false,
        }
    }

    fn scope_of(
        rules: &AccessRules,
        namespace: Option<&str>,
        p: &str,
    ) -> Result<AuthScope, AccessError> {
        rules.decide(namespace, &path(p)).map(|grant| grant.scope)
    }

    #[test]
    fn prefixes_match_whole_segments_and_globs_match_the_whole_path() {
        assert!(matches("secret/app-1", "secret/app-1"));
        assert!(matches("secret/app-1/", "secret/app-1/db"));
        assert!(!matches("secret/app", "secret/app-1"));
        assert!(matches("secret/app-*", "secret/app-1"));
        // A glob covers what is below what it matches, as a prefix does.
        assert!(matches("secret/app-*", "secret/app-1/db"));
        assert!(!matches("secret/app-*", "secret/other/app-1"));
        assert!(matches("secret/*/db", "secret/app-1/db"));
        assert!(matches("secret/**", "secret/a/b/c"));
        assert!(matches("secret/**/db", "secret/db"));
        assert!(matches("secret/**/db", "secret/a/b/db"));
        assert!(matches("secret/*-prod-*", "secret/app-prod-eu"));
        assert!(!matches("secret/*-prod-*", "secret/app-dev-eu"));
        assert!(!matches("kv/**", "secret/a"));
    }

    #[test]
    fn the_first_matching_rule_decides_and_no_match_is_refused_naming_the_rule_set() {
        let rules = AccessRules::new(
            vec![
                rule("secret/admin", false, false),
                rule("secret/team-a/*", true, true),
                rule("secret/shared", true, false),
                rule("secret/**", false, false),
            ],
            "config.toml [[rules]]",
        );
        assert_eq!(
            scope_of(&rules, None, "secret/team-a/app"),
            Ok(AuthScope::Rule(1))
        );
        assert_eq!(
            rules.decide(None, &path("secret/shared/x")),
            Ok(Grant {
                scope: AuthScope::Default,
                rule: Some(2),
                dynamic: false
            })
        );
        let denied = rules.decide(None, &path("secret/admin/root")).unwrap_err();
        assert!(
            matches!(denied, AccessError::Denied { index: 0, .. }),
            "{denied}"
        );
        assert_eq!(denied.rule(), "rules[0]");
        assert!(rules.decide(None, &path("secret/team-b")).is_err());
        let none = rules.decide(None, &path("kv/x")).unwrap_err().to_string();
        assert!(
            none.contains("config.toml [[rules]]") && none.contains("secret/team-a/*"),
            "{none}"
        );
        assert_eq!(
            AccessRules::allow_all().decide(None, &path("any/thing")),
            Ok(Grant {
                scope: AuthScope::Default,
                rule: None,
                dynamic: false
            })
        );
    }

    /// The attack of issue 11: a parent volume must not read below a deny rule, nor with broader credentials than
    /// the rule of the path it reads.
    #[test]
    fn a_path_reached_through_a_parent_is_decided_by_its_own_rule() {
        let rules = AccessRules::new(
            vec![
                rule("secret/admin", false, false),
                rule("secret/app-1", true, true),
                rule("secret/team-*/db", false, false),
                rule("secret", true, false),
            ],
            "rules",
        );
        // The volume `secret` is allowed, but what it resolves to is decided path by path.
        assert_eq!(scope_of(&rules, None, "secret"), Ok(AuthScope::Default));
        assert!(matches!(
            rules.decide(None, &path("secret/admin/root")),
            Err(AccessError::Denied { index: 0, .. })
        ));
        assert_eq!(
            scope_of(&rules, None, "secret/app-1/db"),
            Ok(AuthScope::Rule(1))
        );
        // Globs give the same answer whichever volume the path is reached through: the decision sees the full path.
        assert!(matches!(
            rules.decide(None, &path("secret/team-x/db")),
            Err(AccessError::Denied { index: 2, .. })
        ));
        assert!(matches!(
            rules.decide(None, &path("secret/team-x/db/password")),
            Err(AccessError::Denied { index: 2, .. })
        ));
        assert_eq!(
            scope_of(&rules, None, "secret/team-x/other"),
            Ok(AuthScope::Default)
        );
        // A mount unit of `secret` logs in for every scope a read below it may use.
        assert_eq!(
            rules.scopes_below(None, &path("secret")),
            vec![AuthScope::Rule(1), AuthScope::Default]
        );
        assert_eq!(
            rules.scopes_below(None, &path("secret/app-1")),
            vec![AuthScope::Rule(1)]
        );
        assert_eq!(
            rules.scopes_below(None, &path("secret/other")),
            vec![AuthScope::Default]
        );
    }

    #[test]
    fn the_digest_below_a_volume_changes_with_the_rules_that_decide_it_only() {
        let rules = |extra: Vec<Rule>| {
            let mut all = vec![
                rule("secret/admin", false, false),
                rule("secret/app-1", true, true),
            ];
            all.extend(extra);
            all.push(rule("secret", true, false));
            AccessRules::new(all, "rules")
        };
        let base = rules(vec![]);
        let volume = path("secret/app-1");
        let parent = path("secret");
        // A rule elsewhere changes neither volume's digest under it only if it cannot match below that volume.
        let elsewhere = rules(vec![rule("kv/other", true, false)]);
        assert_eq!(
            base.digest_below(None, &volume),
            elsewhere.digest_below(None, &volume)
        );
        assert_eq!(
            base.digest_below(None, &parent),
            elsewhere.digest_below(None, &parent)
        );
        // A deny rule added below a volume changes its digest, and its parent's.
        let denied = rules(vec![rule("secret/app-1/db", false, false)]);
        assert_ne!(
            base.digest_below(None, &parent),
            denied.digest_below(None, &parent)
        );
        let denied_first = AccessRules::new(
            vec![
                rule("secret/app-1/db", false, false),
                rule("secret/app-1", true, true),
            ],
            "rules",
        );
        let app_only = AccessRules::new(vec![rule("secret/app-1", true, true)], "rules");
        assert_ne!(
            app_only.digest_below(None, &volume),
            denied_first.digest_below(None, &volume)
        );
        // New credentials for the volume's rule (its fingerprint) change the digest; the namespace counts too.
        let recredentialed =
            base.clone()
                .with_fingerprints(vec!["a".into(), "new-approle".into(), "c".into()]);
        assert_ne!(
            base.digest_below(None, &volume),
            recredentialed.digest_below(None, &volume)
        );
        assert_ne!(
            base.digest_below(None, &volume),
            base.digest_below(Some("team-a"), &volume)
        );
    }

    #[test]
    fn namespaces_are_part_of_the_match() {
        let mut team = rule("secret/app-1", true, true);
        team.namespace = Some("team-*".into());
        let rules = AccessRules::new(vec![team, rule("secret/app-1", true, false)], "rules");
        // A rule without a namespace covers only the configured one.
        assert_eq!(
            scope_of(&rules, None, "secret/app-1"),
            Ok(AuthScope::Default)
        );
        assert_eq!(
            scope_of(&rules, Some("team-a"), "secret/app-1"),
            Ok(AuthScope::Rule(0))
        );
        let finance = rules
            .decide(Some("finance"), &path("secret/app-1"))
            .unwrap_err();
        assert!(matches!(finance, AccessError::NoRule { .. }), "{finance}");
        assert!(finance.to_string().contains("\"finance\""), "{finance}");
        // A namespace glob is matched segment by segment, never as a prefix.
        assert!(rules
            .decide(Some("team-a/child"), &path("secret/app-1"))
            .is_err());
        assert_eq!(
            rules.scopes_below(Some("team-b"), &path("secret")),
            vec![AuthScope::Rule(0)]
        );
        assert!(rules
            .scopes_below(Some("finance"), &path("secret"))
            .is_empty());
        // Without rules, only the configured namespace is served.
        assert!(matches!(
            AccessRules::allow_all().decide(Some("finance"), &path("secret/x")),
            Err(AccessError::NamespaceWithoutRules { .. })
        ));
    }

    #[test]
    fn may_match_below_never_misses_a_path_a_rule_matches() {
        let patterns = [
            "secret",
            "secret/app-1",
            "secret/*",
            "secret/*/db",
            "secret/**",
            "secret/**/db",
            "*/x",
            "kv",
            "secret/app-*/**",
        ];
        let paths = [
            "secret",
            "secret/app-1",
            "secret/app-1/db",
            "secret/x/db",
            "secret/a/b/db",
            "kv/x",
            "k/x",
            "secret/app-2/q/r",
        ];
        for pattern in patterns {
            for full in paths {
                if !matches(pattern, full) {
                    continue;
                }
                // Every prefix of a matched path must be reported as possibly matching below.
                let segments: Vec<&str> = full.split('/').collect();
                for depth in 1..=segments.len() {
                    let prefix = segments[..depth].join("/");
                    assert!(
                        may_match_below(pattern, &prefix),
                        "{pattern} matches {full} but not below {prefix}"
                    );
                }
            }
        }
        assert!(may_match_below("secret/*", "secret/a/b"));
        assert!(!may_match_below("secret/*/db", "secret/a/b"));
        assert!(!may_match_below("kv/**", "secret"));
        assert!(!may_match_below("secret/app-1", "secret/app-2"));
    }
}
