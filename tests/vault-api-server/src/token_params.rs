//! The token settings every auth role carries (Vault's `tokenutil.TokenParams`):
//! parsed from a role write, echoed by a role read, applied at login.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::http::Reply;
use crate::tokens::{NewToken, Token, TokenStore};
use crate::util::{self, dur, num, str_list};

/// The body keys a role reads an aliased setting from, in order: a later key
/// present in the body overrides an earlier one. The auth methods differ in
/// their legacy aliases and in which spelling wins, so each names its own.
#[derive(Debug)]
pub(crate) struct Keys {
    pub ttl: &'static [&'static str],
    pub max_ttl: &'static [&'static str],
    pub period: &'static [&'static str],
    pub policies: &'static [&'static str],
}

/// A role's token settings; durations are in seconds, 0 = unset.
#[derive(Debug, Clone)]
pub(crate) struct TokenParams {
    /// Kept here so `update` can't be called with another method's aliases.
    keys: &'static Keys,
    pub policies: Vec<String>,
    pub ttl: u64,
    pub max_ttl: u64,
    pub period: u64,
    pub explicit_max_ttl: u64,
    /// 0 = unlimited.
    pub num_uses: u64,
    pub no_default_policy: bool,
    /// `service`, `batch`, `default`, `default-service` or `default-batch`.
    pub token_type: String,
    /// One entity per role, so every login of a role shares it.
    pub entity_id: String,
}

impl TokenParams {
    /// A new role's settings: Vault's defaults, a fresh entity.
    pub(crate) fn new(keys: &'static Keys) -> TokenParams {
        TokenParams {
            keys,
            policies: Vec::new(),
            ttl: 0,
            max_ttl: 0,
            period: 0,
            explicit_max_ttl: 0,
            num_uses: 0,
            no_default_policy: false,
            token_type: "default".into(),
            entity_id: util::uuid(),
        }
    }

    /// Apply a role write's token keys, stopping at the first invalid one;
    /// keys before it stay applied (AppRole edits its stored role in place).
    pub(crate) fn update(&mut self, body: &Map<String, Value>) -> Result<(), Reply> {
        let keys = self.keys;
        durations(body, keys.ttl, &mut self.ttl)?;
        durations(body, keys.max_ttl, &mut self.max_ttl)?;
        durations(body, keys.period, &mut self.period)?;
        dur(body, "token_explicit_max_ttl", &mut self.explicit_max_ttl)?;
        num(body, "token_num_uses", &mut self.num_uses)?;
        for key in keys.policies {
            if let Some(v) = body.get(*key) {
                self.policies = str_list(v);
            }
        }
        if let Some(b) = body.get("token_no_default_policy").and_then(Value::as_bool) {
            self.no_default_policy = b;
        }
        if let Some(v) = body.get("token_type") {
            self.token_type = parse_token_type(v)?;
        }
        Ok(())
    }

    /// A role read's `data`: the shared `token_*` keys plus the role's own
    /// `extra` keys (an object; its keys win on a clash).
    pub(crate) fn describe(&self, extra: Value) -> Value {
        let mut data = json!({
            "token_bound_cidrs": [],
            "token_explicit_max_ttl": self.explicit_max_ttl,
            "token_max_ttl": self.max_ttl,
            "token_no_default_policy": self.no_default_policy,
            "token_num_uses": self.num_uses,
            "token_period": self.period,
            "token_policies": self.policies,
            "token_ttl": self.ttl,
            "token_type": self.token_type,
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
            d.extend(e);
        }
        data
    }

    /// Create the orphan, renewable token a login on this role hands out.
    pub(crate) fn issue(
        &self,
        tokens: &mut TokenStore,
        meta: BTreeMap<String, String>,
        display_name: String,
        path: String,
    ) -> Token {
        tokens.create(NewToken {
            policies: self.policies.clone(),
            no_default_policy: self.no_default_policy,
            meta: Some(meta),
            display_name,
            ttl: (self.ttl > 0).then_some(self.ttl),
            max_ttl: self.max_ttl,
            explicit_max_ttl: self.explicit_max_ttl,
            period: self.period,
            num_uses: self.num_uses,
            renewable: true,
            orphan: true,
            parent: None,
            path,
            entity_id: self.entity_id.clone(),
            role: None,
            id: None,
            renew_ttl: self.ttl,
            batch: is_batch(&self.token_type),
        })
    }
}

/// One duration setting read from each of its `keys` in turn.
fn durations(body: &Map<String, Value>, keys: &[&str], into: &mut u64) -> Result<(), Reply> {
    keys.iter().try_for_each(|key| dur(body, key, into))
}

/// Parse a role's `token_type`: `service`, `batch`, `default`,
/// `default-service`, `default-batch` (empty = `default`).
fn parse_token_type(v: &Value) -> Result<String, Reply> {
    match v.as_str().map(str::trim) {
        Some("") => Ok("default".into()),
        Some(t @ ("service" | "batch" | "default" | "default-service" | "default-batch")) => {
            Ok(t.to_string())
        }
        _ => Err(Reply::error(
            400,
            &format!("invalid 'token_type' value {v}"),
        )),
    }
}

/// Whether a role's `token_type` yields batch tokens (the mount default is
/// `default-service`).
fn is_batch(token_type: &str) -> bool {
    matches!(token_type, "batch" | "default-batch")
}

#[cfg(test)]
mod tests {
    use super::*;

    static LEGACY_WINS: Keys = Keys {
        ttl: &["token_ttl"],
        max_ttl: &["token_max_ttl"],
        period: &["token_period", "period"],
        policies: &["token_policies", "policies"],
    };
    static TOKEN_WINS: Keys = Keys {
        ttl: &["ttl", "token_ttl"],
        max_ttl: &["max_ttl", "token_max_ttl"],
        period: &["period", "token_period"],
        policies: &["policies", "token_policies"],
    };

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn later_keys_win() {
        let b = body(json!({
            "ttl": "1m", "token_ttl": "2m", "period": 3, "token_period": 4,
            "policies": "a", "token_policies": ["b"],
        }));
        let mut legacy = TokenParams::new(&LEGACY_WINS);
        legacy.update(&b).unwrap();
        assert_eq!((legacy.ttl, legacy.period), (120, 3));
        assert_eq!(legacy.policies, ["a"]);
        let mut token = TokenParams::new(&TOKEN_WINS);
        token.update(&b).unwrap();
        assert_eq!((token.ttl, token.period), (120, 4));
        assert_eq!(token.policies, ["b"]);
    }

    #[test]
    fn token_types() {
        let mut p = TokenParams::new(&TOKEN_WINS);
        assert_eq!(p.token_type, "default");
        p.update(&body(json!({ "token_type": "default-batch" })))
            .unwrap();
        assert!(is_batch(&p.token_type));
        p.update(&body(json!({ "token_type": " " }))).unwrap();
        assert_eq!(p.token_type, "default");
        let err = p.update(&body(json!({ "token_type": "weird" })));
        assert_eq!(err.map_err(|r| r.status), Err(400));
    }

    #[test]
    fn describe_merges_role_keys() {
        let p = TokenParams::new(&TOKEN_WINS);
        let d = p.describe(json!({ "ttl": 5, "token_ttl": 7 }));
        assert_eq!(d["token_type"], "default");
        assert_eq!(d["token_bound_cidrs"], json!([]));
        assert_eq!(
            (d["ttl"].as_u64(), d["token_ttl"].as_u64()),
            (Some(5), Some(7))
        );
    }
}
