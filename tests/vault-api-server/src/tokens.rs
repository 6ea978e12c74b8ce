//! Token store (spec §5), policies and ACL checks.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::http::Op;
use crate::util::{self, DEFAULT_TTL};

pub(crate) const PERMISSION_DENIED: &str = "1 error occurred:\n\t* permission denied\n\n";
pub(crate) const INVALID_TOKEN: &str =
    "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n";

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub id: String,
    pub accessor: String,
    /// Sorted.
    pub policies: Vec<String>,
    pub meta: Option<BTreeMap<String, String>>,
    pub display_name: String,
    /// Uses left; 0 = unlimited.
    pub num_uses: u64,
    pub orphan: bool,
    pub path: String,
    pub creation_time: i64,
    pub creation_ttl: u64,
    pub issued: Instant,
    pub issue_wall: OffsetDateTime,
    /// None = never expires.
    pub expires: Option<Instant>,
    /// Latest possible expiry (issue + max TTL); None = unbounded.
    pub max_expires: Option<Instant>,
    pub explicit_max_ttl: u64,
    pub period: u64,
    pub renewable: bool,
    pub entity_id: String,
    pub role: Option<String>,
    pub parent: Option<String>,
    pub last_renewal: Option<i64>,
    /// TTL applied by a renewal without increment.
    pub renew_default_ttl: u64,
    /// TTL granted by the last create/renew (the `auth.lease_duration`).
    pub granted_ttl: u64,
    /// A batch token (`hvb.…`): no accessor, never renewable.
    pub batch: bool,
}

/// Parameters for a new token.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewToken {
    pub policies: Vec<String>,
    pub no_default_policy: bool,
    pub meta: Option<BTreeMap<String, String>>,
    pub display_name: String,
    /// None = default (768h; never for root-policy tokens).
    pub ttl: Option<u64>,
    pub max_ttl: u64,
    pub explicit_max_ttl: u64,
    pub period: u64,
    pub num_uses: u64,
    pub renewable: bool,
    pub orphan: bool,
    pub parent: Option<String>,
    pub path: String,
    pub entity_id: String,
    pub role: Option<String>,
    pub id: Option<String>,
    /// TTL a renewal without increment applies (0 = the token's own TTL,
    /// else the system default).
    pub renew_ttl: u64,
    /// A batch token: `hvb.…`, no accessor, not renewable.
    pub batch: bool,
}

impl Token {
    pub(crate) fn ttl_left(&self, now: Instant) -> u64 {
        self.expires
            .map(|e| e.saturating_duration_since(now).as_secs())
            .unwrap_or(0)
    }

    fn wall_at(&self, t: Instant) -> OffsetDateTime {
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        if t >= now {
            wall + (t - now)
        } else {
            wall - (now - t)
        }
    }

    /// `auth/token/lookup-self` data.
    pub(crate) fn lookup_data(&self) -> Value {
        let now = Instant::now();
        let mut d = json!({
            "accessor": self.accessor,
            "creation_time": self.creation_time,
            "creation_ttl": self.creation_ttl,
            "display_name": self.display_name,
            "entity_id": self.entity_id,
            "expire_time": self.expires.map(|e| util::rfc3339(self.wall_at(e))),
            "explicit_max_ttl": self.explicit_max_ttl,
            "id": self.id,
            "meta": self.meta,
            "num_uses": self.num_uses,
            "orphan": self.orphan,
            "path": self.path,
            "policies": self.policies,
            "ttl": self.ttl_left(now),
            "type": self.token_type(),
        });
        if self.expires.is_some() {
            d["issue_time"] = json!(util::rfc3339(self.issue_wall));
            d["renewable"] = json!(self.renewable);
        }
        if self.period > 0 {
            d["period"] = json!(self.period);
        }
        if let Some(role) = &self.role {
            d["role"] = json!(role);
        }
        if let Some(t) = self.last_renewal {
            d["last_renewal_time"] = json!(t);
            d["last_renewal"] = json!(util::rfc3339(
                OffsetDateTime::from_unix_timestamp(t).unwrap_or(self.issue_wall)
            ));
        }
        d
    }

    pub(crate) fn token_type(&self) -> &'static str {
        if self.batch {
            "batch"
        } else {
            "service"
        }
    }

    /// The `auth` block of login / create / renew replies.
    pub(crate) fn auth_block(&self) -> Value {
        json!({
            "client_token": self.id,
            "accessor": self.accessor,
            "policies": self.policies,
            "token_policies": self.policies,
            "metadata": self.meta,
            "lease_duration": self.granted_ttl,
            "renewable": self.renewable && self.expires.is_some(),
            "entity_id": self.entity_id,
            "token_type": self.token_type(),
            "orphan": self.orphan,
            "mfa_requirement": null,
            "num_uses": self.num_uses,
        })
    }
}

/// Why a token could not be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Unknown, expired, revoked.
    Invalid,
}

/// One path rule of a policy.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub pattern: String,
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub rules: Vec<Rule>,
    /// Source text (as written over HTTP, or rendered for `set_policy`).
    pub text: String,
}

impl Policy {
    pub(crate) fn from_rules(rules: Vec<Rule>) -> Policy {
        let text = rules
            .iter()
            .map(|r| {
                let caps: Vec<String> = r.capabilities.iter().map(|c| format!("\"{c}\"")).collect();
                format!(
                    "path \"{}\" {{\n  capabilities = [{}]\n}}\n",
                    r.pattern,
                    caps.join(", ")
                )
            })
            .collect();
        Policy { rules, text }
    }

    /// Capabilities of the most specific matching rule, if any.
    fn capabilities(&self, path: &str) -> Option<&[String]> {
        self.rules
            .iter()
            .filter(|r| glob_match(&r.pattern, path))
            .max_by_key(|r| specificity(&r.pattern))
            .map(|r| r.capabilities.as_slice())
    }
}

/// Higher = more specific: exact beats globs, longer prefixes beat shorter,
/// fewer `+` beat more.
fn specificity(pattern: &str) -> (bool, usize, usize) {
    let plus = pattern.split('/').filter(|s| *s == "+").count();
    (
        !pattern.ends_with('*') && plus == 0,
        pattern.trim_end_matches('*').len(),
        usize::MAX - plus,
    )
}

/// Vault policy path matching: `+` = one segment, trailing `*` = any suffix.
pub(crate) fn glob_match(pattern: &str, path: &str) -> bool {
    let (pat, prefix) = match pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let pat_segs: Vec<&str> = pat.split('/').collect();
    let path_segs: Vec<&str> = path.split('/').collect();
    for (i, ps) in pat_segs.iter().enumerate() {
        let last = i + 1 == pat_segs.len();
        let Some(seg) = path_segs.get(i) else {
            return false;
        };
        if *ps == "+" {
            if last && !prefix && path_segs.len() != pat_segs.len() {
                return false;
            }
            continue;
        }
        if last {
            return if prefix {
                seg.starts_with(ps)
            } else {
                seg == ps && path_segs.len() == pat_segs.len()
            };
        }
        if seg != ps {
            return false;
        }
    }
    prefix
}

/// Parse the simple HCL policy shape:
/// `path "secret/data/a/*" { capabilities = ["read", "list"] }` (repeated).
pub(crate) fn parse_hcl(text: &str) -> Result<Vec<Rule>, String> {
    #[derive(Debug, PartialEq)]
    enum Tok {
        Ident(String),
        Str(String),
        Punct(char),
    }
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' {
            chars.next();
        } else if c == '#' || c == '/' {
            // comment to end of line (`#` or `//`)
            if c == '/' {
                chars.next();
                if chars.peek() != Some(&'/') {
                    return Err("unexpected '/'".into());
                }
            }
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => s.extend(chars.next()),
                    Some(c) => s.push(c),
                    None => return Err("unterminated string".into()),
                }
            }
            toks.push(Tok::Str(s));
        } else if c.is_alphanumeric() || c == '_' {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    s.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            toks.push(Tok::Ident(s));
        } else {
            toks.push(Tok::Punct(c));
            chars.next();
        }
    }
    let mut rules = Vec::new();
    let mut it = toks.into_iter().peekable();
    while let Some(t) = it.next() {
        let (Tok::Ident(kw), Some(Tok::Str(pattern)), Some(Tok::Punct('{'))) =
            (t, it.next(), it.next())
        else {
            return Err("expected: path \"<glob>\" {".into());
        };
        if kw != "path" {
            return Err(format!("unsupported block {kw:?}"));
        }
        let mut caps = Vec::new();
        loop {
            match it.next() {
                Some(Tok::Punct('}')) => break,
                Some(Tok::Ident(k)) => {
                    if it.next() != Some(Tok::Punct('=')) {
                        return Err(format!("expected '=' after {k}"));
                    }
                    match it.next() {
                        Some(Tok::Punct('[')) => loop {
                            match it.next() {
                                Some(Tok::Punct(']')) => break,
                                Some(Tok::Str(s)) if k == "capabilities" => caps.push(s),
                                Some(_) => {}
                                None => return Err("unterminated list".into()),
                            }
                        },
                        Some(_) => {}
                        None => return Err("unexpected end of policy".into()),
                    }
                }
                _ => return Err("malformed path block".into()),
            }
        }
        rules.push(Rule {
            pattern,
            capabilities: caps,
        });
    }
    Ok(rules)
}

#[derive(Debug)]
pub(crate) struct TokenStore {
    tokens: HashMap<String, Token>,
    pub policies: HashMap<String, Policy>,
}

impl TokenStore {
    pub(crate) fn new(root_token: &str) -> TokenStore {
        let mut ts = TokenStore {
            tokens: HashMap::new(),
            policies: HashMap::new(),
        };
        let default_rules = [
            ("auth/token/lookup-self", &["read"][..]),
            ("auth/token/renew-self", &["update"][..]),
            ("auth/token/revoke-self", &["update"][..]),
            ("sys/capabilities-self", &["update"][..]),
            ("sys/wrapping/wrap", &["update"][..]),
            ("sys/wrapping/lookup", &["update"][..]),
            ("sys/wrapping/unwrap", &["update"][..]),
            ("sys/renew", &["update"][..]),
            ("sys/leases/renew", &["update"][..]),
        ];
        ts.policies.insert(
            "default".into(),
            Policy::from_rules(
                default_rules
                    .iter()
                    .map(|(p, c)| Rule {
                        pattern: p.to_string(),
                        capabilities: c.iter().map(|s| s.to_string()).collect(),
                    })
                    .collect(),
            ),
        );
        ts.create(NewToken {
            policies: vec!["root".into()],
            no_default_policy: true,
            display_name: "root".into(),
            orphan: true,
            path: "auth/token/root".into(),
            id: Some(root_token.to_string()),
            ..Default::default()
        });
        ts
    }

    pub(crate) fn create(&mut self, p: NewToken) -> Token {
        let mut policies = p.policies.clone();
        let is_root = policies.iter().any(|x| x == "root");
        if !p.no_default_policy && !is_root && !policies.iter().any(|x| x == "default") {
            policies.push("default".into());
        }
        policies.sort();
        policies.dedup();
        let now = Instant::now();
        let mut max_ttl = if p.explicit_max_ttl > 0 {
            p.explicit_max_ttl
        } else if p.max_ttl > 0 {
            p.max_ttl
        } else {
            DEFAULT_TTL
        };
        if p.max_ttl > 0 {
            max_ttl = max_ttl.min(p.max_ttl);
        }
        let ttl = if p.period > 0 {
            Some(p.period)
        } else {
            match p.ttl {
                Some(0) | None if is_root => None,
                Some(0) | None => Some(DEFAULT_TTL.min(max_ttl)),
                Some(t) => Some(t.min(max_ttl)),
            }
        };
        let max_expires = match (ttl, p.period > 0) {
            (None, _) => None,
            (Some(_), true) if p.explicit_max_ttl == 0 => None,
            (Some(_), true) => Some(now + Duration::from_secs(p.explicit_max_ttl)),
            (Some(_), false) => Some(now + Duration::from_secs(max_ttl)),
        };
        let token = Token {
            id: p.id.clone().unwrap_or_else(|| {
                if p.batch {
                    format!("hvb.{}", util::hex_id(130))
                } else {
                    format!("hvs.{}", util::hex_id(90))
                }
            }),
            accessor: if p.batch {
                String::new()
            } else {
                util::hex_id(24)
            },
            policies,
            meta: p.meta.clone(),
            display_name: p.display_name.clone(),
            num_uses: p.num_uses,
            orphan: p.orphan,
            path: p.path.clone(),
            creation_time: util::now_unix(),
            creation_ttl: ttl.unwrap_or(0),
            granted_ttl: ttl.unwrap_or(0),
            issued: now,
            issue_wall: OffsetDateTime::now_utc(),
            expires: ttl.map(|t| now + Duration::from_secs(t)),
            max_expires,
            explicit_max_ttl: p.explicit_max_ttl,
            period: p.period,
            renewable: p.renewable && !p.batch,
            batch: p.batch,
            entity_id: p.entity_id.clone(),
            role: p.role.clone(),
            parent: if p.orphan { None } else { p.parent.clone() },
            last_renewal: None,
            // A renewal without increment grants the token's own TTL again
            // (Vault: `CalculateTTL` with the lease's TTL as backend TTL).
            renew_default_ttl: match (p.renew_ttl, p.ttl) {
                (r, _) if r > 0 => r,
                (_, Some(t)) if t > 0 => t,
                _ => DEFAULT_TTL,
            },
        };
        self.tokens.insert(token.id.clone(), token.clone());
        token
    }

    /// Look up a live token without spending a use.
    pub(crate) fn peek(&mut self, id: &str) -> Result<Token, TokenError> {
        let now = Instant::now();
        match self.tokens.get(id) {
            Some(t) if t.expires.is_none_or(|e| e > now) => Ok(t.clone()),
            Some(_) => {
                self.revoke(id);
                Err(TokenError::Invalid)
            }
            None => Err(TokenError::Invalid),
        }
    }

    /// Validate a token for one authenticated request, spending a use.
    pub(crate) fn use_token(&mut self, id: &str) -> Result<Token, TokenError> {
        let mut t = self.peek(id)?;
        if t.num_uses > 0 {
            t.num_uses -= 1;
            if t.num_uses == 0 {
                self.revoke(id);
            } else if let Some(stored) = self.tokens.get_mut(id) {
                stored.num_uses = t.num_uses;
            }
        }
        Ok(t)
    }

    /// The live tokens issued at `path` (such as `auth/approle/login`), in no order.
    pub(crate) fn live_ids_issued_at(&self, path: &str) -> Vec<String> {
        let now = Instant::now();
        self.tokens
            .values()
            .filter(|t| t.path == path && t.expires.is_none_or(|e| e > now))
            .map(|t| t.id.clone())
            .collect()
    }

    /// Revoke a token and all its descendants.
    pub(crate) fn revoke(&mut self, id: &str) {
        if self.tokens.remove(id).is_none() {
            return;
        }
        let children: Vec<String> = self
            .tokens
            .values()
            .filter(|t| t.parent.as_deref() == Some(id))
            .map(|t| t.id.clone())
            .collect();
        for c in children {
            self.revoke(&c);
        }
    }

    /// Renew a token: `Ok((token, warning))` or `Err((status, message))`.
    pub(crate) fn renew(
        &mut self,
        id: &str,
        increment: Option<u64>,
    ) -> Result<(Token, Option<String>), (u16, String)> {
        let Some(t) = self.tokens.get_mut(id) else {
            return Err((403, INVALID_TOKEN.into()));
        };
        if t.batch {
            return Err((400, "batch tokens cannot be renewed".into()));
        }
        if t.expires.is_none() {
            return Err((400, "invalid lease ID".into()));
        }
        if !t.renewable {
            return Err((400, "lease is not renewable".into()));
        }
        let now = Instant::now();
        let wanted = if t.period > 0 {
            t.period
        } else {
            increment.filter(|i| *i > 0).unwrap_or(t.renew_default_ttl)
        };
        let mut ttl = wanted;
        let mut warning = None;
        if let Some(max) = t.max_expires {
            let left = max.saturating_duration_since(now).as_secs();
            if ttl > left {
                let max_ttl = max.saturating_duration_since(t.issued).as_secs();
                warning = Some(format!(
                    "TTL of \"{}\" exceeded the effective max_ttl of \"{}\"; TTL value is capped accordingly",
                    util::go_duration(wanted),
                    util::go_duration(left.min(max_ttl))
                ));
                ttl = left;
            }
        }
        t.expires = Some(now + Duration::from_secs(ttl));
        t.granted_ttl = ttl;
        t.last_renewal = Some(util::now_unix());
        Ok((t.clone(), warning))
    }

    pub(crate) fn policy_exists(&self, name: &str) -> bool {
        name == "root" || self.policies.contains_key(name)
    }

    /// Union of capabilities the token's policies grant on `path`.
    pub(crate) fn capabilities(&self, policies: &[String], path: &str) -> Vec<String> {
        if policies.iter().any(|p| p == "root") {
            return vec!["root".into()];
        }
        let mut caps: Vec<String> = policies
            .iter()
            .filter_map(|p| self.policies.get(p))
            .filter_map(|p| p.capabilities(path))
            .flatten()
            .cloned()
            .collect();
        if caps.iter().any(|c| c == "deny") {
            return vec!["deny".into()];
        }
        caps.sort();
        caps.dedup();
        caps
    }

    /// Whether the policies allow `op` on `path`.
    pub(crate) fn allowed(&self, policies: &[String], path: &str, op: Op) -> bool {
        let caps = self.capabilities(policies, path);
        let has = |c: &str| caps.iter().any(|x| x == c);
        if has("root") {
            return true;
        }
        if has("deny") {
            return false;
        }
        match op {
            Op::Read => has("read"),
            Op::List => has("list"),
            Op::Write => has("create") || has("update") || has("patch"),
            Op::Delete => has("delete"),
        }
    }

    /// Whether any rule grants something on `mount` or below (preflight).
    pub(crate) fn has_mount_access(&self, policies: &[String], mount: &str) -> bool {
        if policies.iter().any(|p| p == "root") {
            return true;
        }
        policies
            .iter()
            .filter_map(|p| self.policies.get(p))
            .flat_map(|p| p.rules.iter())
            .filter(|r| !r.capabilities.is_empty() && !r.capabilities.iter().any(|c| c == "deny"))
            .any(|r| {
                let prefix = r.pattern.trim_end_matches('*');
                r.pattern.starts_with(mount)
                    || (r.pattern.ends_with('*') && mount.starts_with(prefix))
                    || glob_match(&r.pattern, mount)
                    || (r.pattern.contains('+') && glob_prefix_match(&r.pattern, mount))
            })
    }
}

/// Whether `mount` (`secret/`) could be a prefix of something `pattern` matches.
fn glob_prefix_match(pattern: &str, mount: &str) -> bool {
    let m: Vec<&str> = mount.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = pattern.split('/').collect();
    m.len() <= p.len() && m.iter().zip(&p).all(|(a, b)| *b == "+" || a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("secret/data/a/*", "secret/data/a/b/c"));
        assert!(glob_match("secret/data/a*", "secret/data/abc"));
        assert!(!glob_match("secret/data/a/*", "secret/data/b/c"));
        assert!(glob_match("secret/data/+/db", "secret/data/app/db"));
        assert!(!glob_match("secret/data/+/db", "secret/data/app/x/db"));
        assert!(glob_match("secret/+/app/*", "secret/data/app/x"));
        assert!(glob_match("kv/exact", "kv/exact"));
        assert!(!glob_match("kv/exact", "kv/exact/more"));
        assert!(!glob_match("kv/exact", "kv/exac"));
    }

    #[test]
    fn hcl() {
        let rules = parse_hcl(
            "# comment\npath \"secret/data/a/*\" {\n  capabilities = [\"read\", \"list\"]\n}\npath \"kv/+/x\" { capabilities = [\"deny\"] }",
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].pattern, "secret/data/a/*");
        assert_eq!(rules[0].capabilities, vec!["read", "list"]);
        assert_eq!(rules[1].capabilities, vec!["deny"]);
        assert!(parse_hcl("path {").is_err());
    }

    #[test]
    fn acl_most_specific_wins() {
        let mut ts = TokenStore::new("root");
        ts.policies.insert(
            "p".into(),
            Policy::from_rules(vec![
                Rule {
                    pattern: "secret/*".into(),
                    capabilities: vec!["read".into()],
                },
                Rule {
                    pattern: "secret/data/private/*".into(),
                    capabilities: vec!["deny".into()],
                },
            ]),
        );
        let p = vec!["p".to_string()];
        assert!(ts.allowed(&p, "secret/data/x", Op::Read));
        assert!(!ts.allowed(&p, "secret/data/private/x", Op::Read));
        assert!(!ts.allowed(&p, "secret/data/x", Op::Write));
        assert!(ts.has_mount_access(&p, "secret/"));
        assert!(!ts.has_mount_access(&p, "kv/"));
    }
}
