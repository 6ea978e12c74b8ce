//! Access rules: which Vault paths may be volumes, and with which credentials they are read.
//!
//! Rules are tried in order and the first that matches a volume's path decides. A rule's `path` is a prefix
//! (`secret/app-1` matches `secret/app-1` and everything below it, segment by segment) unless it holds a wildcard:
//! then it is a glob over the whole path, where `*` matches within one segment and `**` any number of segments.
//! With no rules at all, every path is allowed (the original tool's behaviour) and a warning is logged at start.

use std::fmt;

use crate::names::VaultPath;

/// One rule, as the core needs it (the config adds its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: String,
    pub allow: bool,
    /// Whether the rule reads with its own credentials rather than the `[vault]` ones.
    pub own_auth: bool,
}

/// Which credentials read a volume: the `[vault]` ones, or those of rule N.
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

/// Why a volume is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("volume {volume:?} is refused by access rule rules[{index}] (path {pattern:?}, allow = false) in {rule_set}")]
    Denied {
        volume: String,
        index: usize,
        pattern: String,
        rule_set: String,
    },
    #[error("volume {volume:?} matches no access rule in {rule_set}; the rules allow: {allowed}")]
    NoRule {
        volume: String,
        rule_set: String,
        allowed: String,
    },
}

/// The ordered rule set.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
    /// Where the rules were configured, for messages (`/etc/docker-volume-libsecret/config.toml [[rules]]`).
    origin: String,
}

/// Whether `pattern` (a prefix or a glob) matches `path`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_matches('/');
    if !pattern.contains('*') {
        return path == pattern || path.starts_with(&format!("{pattern}/"));
    }
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    glob_segments(&pattern, &path)
}

fn glob_segments(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| glob_segments(rest, &path[skip..])),
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
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
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
        }
    }

    /// No rules: everything is allowed with the `[vault]` credentials.
    pub fn allow_all() -> Self {
        AccessRules::default()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The credentials `path` is read with, or why it may not be a volume.
    pub fn decide(&self, path: &VaultPath) -> Result<AuthScope, AccessError> {
        if self.rules.is_empty() {
            return Ok(AuthScope::Default);
        }
        let volume = path.as_str();
        match self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| matches(&rule.path, volume))
        {
            Some((index, rule)) if rule.allow => Ok(if rule.own_auth {
                AuthScope::Rule(index)
            } else {
                AuthScope::Default
            }),
            Some((index, rule)) => Err(AccessError::Denied {
                volume: volume.to_owned(),
                index,
                pattern: rule.path.clone(),
                rule_set: self.origin.clone(),
            }),
            None => Err(AccessError::NoRule {
                volume: volume.to_owned(),
                rule_set: self.origin.clone(),
                allowed: self
                    .rules
                    .iter()
                    .filter(|rule| rule.allow)
                    .map(|rule| rule.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> VaultPath {
        VaultPath::from_volume_name(p).unwrap()
    }

    #[test]
    fn prefixes_match_whole_segments_and_globs_match_the_whole_path() {
        assert!(matches("secret/app-1", "secret/app-1"));
        assert!(matches("secret/app-1/", "secret/app-1/db"));
        assert!(!matches("secret/app", "secret/app-1"));
        assert!(matches("secret/app-*", "secret/app-1"));
        assert!(!matches("secret/app-*", "secret/app-1/db"));
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
                Rule {
                    path: "secret/admin".into(),
                    allow: false,
                    own_auth: false,
                },
                Rule {
                    path: "secret/team-a/*".into(),
                    allow: true,
                    own_auth: true,
                },
                Rule {
                    path: "secret/shared".into(),
                    allow: true,
                    own_auth: false,
                },
                Rule {
                    path: "secret/**".into(),
                    allow: false,
                    own_auth: false,
                },
            ],
            "config.toml [[rules]]",
        );
        assert_eq!(
            rules.decide(&path("secret/team-a/app")),
            Ok(AuthScope::Rule(1))
        );
        assert_eq!(
            rules.decide(&path("secret/shared/x")),
            Ok(AuthScope::Default)
        );
        let denied = rules.decide(&path("secret/admin/root")).unwrap_err();
        assert!(
            matches!(denied, AccessError::Denied { index: 0, .. }),
            "{denied}"
        );
        assert!(rules.decide(&path("secret/team-b")).is_err());
        let none = rules.decide(&path("kv/x")).unwrap_err().to_string();
        assert!(
            none.contains("config.toml [[rules]]") && none.contains("secret/team-a/*"),
            "{none}"
        );
        assert_eq!(
            AccessRules::allow_all().decide(&path("any/thing")),
            Ok(AuthScope::Default)
        );
    }
}
