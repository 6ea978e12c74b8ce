//! Fuzz targets as proptest properties (issue #5, bad input hardening), plus the regression cases they found.
//!
//! Each target is one `#[test]` whose case count comes from `FUZZ_CASES` (default 2000), so CI bounds the time and
//! `scripts/fuzz.sh` runs many more. Nothing here touches the kernel: the plugin runs over in-memory fakes of
//! [`RecordStore`] and [`Mounter`].
//!
//! - `plugin_requests_never_panic_and_always_answer_json`: sequences of requests (arbitrary bytes, and plausible
//!   Docker bodies with random names, IDs, options, wrong types, huge strings and nested junk) against every
//!   endpoint and random paths, checked against a model of the volumes and their mount counts.
//! - `volume_names_validate_and_escape_safely`: `VaultPath::from_volume_name` and `escape_component`.
//! - `file_names_never_resolve_outside_the_volume`: `FileName::parse` and its `SecretRef` under a volume path.
//! - `secrets_render_any_json`: `Secret::render` of arbitrary JSON fields in every view.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use docker_volume_libsecret::names::{
    check_segment, escape_component, FileName, VaultPath, View, MAX_VOLUME_NAME_BYTES,
};
use docker_volume_libsecret::plugin::{Plugin, Reply};
use docker_volume_libsecret::source::Secret;
use docker_volume_libsecret::testing::{FakeMounter, MemoryRecordStore};
use docker_volume_libsecret::volumes::{VolumeOptions, Volumes};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

/// Linux's longest file name (`NAME_MAX`): a mountpoint or state file name must fit in it.
const NAME_MAX: usize = 255;
/// The longest suffix the state directory adds to an escaped volume name (`.json.tmp` while writing).
const STATE_SUFFIX: &str = ".json.tmp";
/// Names whose plain escape is at most this long keep it (readable mountpoints); longer ones may be hashed.
const SHORT_ESCAPE: usize = 128;
const MOUNT_ROOT: &str = "/run/fuzz-test/mounts";

// ---------------------------------------------------------------------------------------------------------------
// Configuration and reporting

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Failing inputs are recorded by hand as regression tests below, not in a file beside this one.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Counts the cases a target ran and prints the count when the target ends (pass or fail), for `scripts/fuzz.sh`.
struct Tally {
    target: &'static str,
    cases: AtomicUsize,
}

impl Tally {
    fn new(target: &'static str) -> Self {
        Tally {
            target,
            cases: AtomicUsize::new(0),
        }
    }

    fn case(&self) {
        self.cases.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        eprintln!(
            "fuzz target {}: {} cases run (configured {}): {outcome}",
            self.target,
            self.cases.load(Ordering::Relaxed),
            cases()
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// In-memory fakes of the public traits

struct Harness {
    plugin: Plugin,
    mounter: FakeMounter,
}

fn harness(rt: &tokio::runtime::Runtime) -> Harness {
    let mounter = FakeMounter::new();
    // Rules that allow every path in every namespace, so the model's "valid name and options" is what Create
    // accepts (the namespace option needs a rule naming the namespace).
    let allow_all = |namespace: Option<&str>| docker_volume_libsecret::access::Rule {
        path: "**".into(),
        namespace: namespace.map(str::to_owned),
        allow: true,
        own_auth: false,
        dynamic: false,
    };
    let volumes = rt
        .block_on(Volumes::open_with_access(
            Box::new(MemoryRecordStore::default()),
            Box::new(mounter.clone()),
            PathBuf::from(MOUNT_ROOT),
            docker_volume_libsecret::access::AccessRules::new(
                vec![allow_all(None), allow_all(Some("**"))],
                "fuzz [[rules]]",
            ),
        ))
        .unwrap();
    Harness {
        plugin: Plugin::new(Arc::new(volumes)),
        mounter,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// Generators

const METHODS: &[&str] = &[
    "Plugin.Activate",
    "VolumeDriver.Capabilities",
    "VolumeDriver.Create",
    "VolumeDriver.Remove",
    "VolumeDriver.Mount",
    "VolumeDriver.Unmount",
    "VolumeDriver.Path",
    "VolumeDriver.Get",
    "VolumeDriver.List",
];

/// One segment of a volume name: mostly plausible, often hostile.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9_-]{1,10}",
        1 => Just(String::new()),
        1 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => "[.]{1,4}",
        2 => "[ -~]{1,10}",
        2 => "\\PC{1,6}",
        1 => ".{1,6}",
        1 => vec(prop::char::range('\0', '\u{9f}'), 1..4).prop_map(|c| c.into_iter().collect()),
    ]
}

/// A string of exactly `len` bytes (ASCII filler after `prefix`).
fn sized(prefix: &str, filler: char, len: usize) -> String {
    let mut name = prefix.to_owned();
    while name.len() < len {
        name.push(filler);
    }
    name.truncate(len);
    name
}

/// Volume names: joined segments with optional leading/trailing `/`, arbitrary strings, and sizes around the limits.
fn volume_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (vec(segment(), 1..5), any::<bool>(), any::<bool>()).prop_map(|(segments, lead, trail)| {
            let mut name = segments.join("/");
            if lead {
                name.insert(0, '/');
            }
            if trail {
                name.push('/');
            }
            name
        }),
        1 => any::<String>(),
        1 => "[a-z/.#%@\u{0}\n\u{7f}]{0,12}",
        2 => (
            select(vec!["secret/", "", "/", "secret/a/", "kv/x.y/"]),
            select(vec!['a', '.', '/', '#', '%', '\0', 'é']),
            select(vec![100usize, 240, 245, 246, 250, 255, 256, 1016, 1023, 1024, 1025, 2000, 5000, 70000]),
        )
            .prop_map(|(prefix, filler, len)| sized(prefix, if filler.len_utf8() == 1 { filler } else { 'e' }, len)),
    ]
}

/// Names most of which are valid, so that sequences of calls create, mount and remove volumes.
fn pool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(secret|kv)/[a-z0-9-]{1,8}/?",
        1 => volume_name(),
    ]
}

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn option_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "refresh_interval", "namespace", "token", "vault_token", "secret_id", "password", "role_id",
            "addr", "Token", "REFRESH_INTERVAL", "", " refresh_interval",
        ]).prop_map(str::to_owned),
        1 => "[a-zA-Z_]{1,12}",
        1 => ".{0,10}",
    ]
}

fn option_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[0-9]{1,6}(ns|ms|s|m|h|d)",
        2 => select(vec!["1s", "24h", "86400s", "86401s", "0s", "999ms", "soon", "", "team-a", "../root", "a//b"])
            .prop_map(str::to_owned),
        1 => "[a-z0-9/_-]{0,20}",
        1 => ".{0,30}",
        1 => "[a-z]{1,5}".prop_map(|s| s.repeat(2000)),
        2 => "hvs\\.[A-Za-z0-9]{20}",
    ]
}

/// What a generated request body is, so the check knows which answers are right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A well-formed Docker body: `Name` a string, `ID` absent or a string, `Opts` absent, null or strings.
    WellFormed,
    /// Not decodable into the endpoint's request: missing or wrong-typed fields, or not JSON at all.
    Malformed,
    /// Anything else (extra fields, arrays, duplicate keys, junk): any clear answer will do.
    Junk,
}

/// A `Name`, `ID` or `Opts` field: a good value, absent, or a wrong type.
#[derive(Debug, Clone)]
enum Field<T> {
    Good(T),
    Absent,
    Wrong(Value),
}

#[derive(Debug, Clone)]
enum NameChoice {
    Pool(usize),
    Fresh(String),
}

#[derive(Debug, Clone)]
struct Template {
    path: String,
    name: Field<NameChoice>,
    id: Field<String>,
    opts: Field<Option<BTreeMap<String, String>>>,
    extra: Vec<(String, Value)>,
    encoding: Encoding,
}

#[derive(Debug, Clone)]
enum Encoding {
    Compact,
    Pretty,
    /// The fields' values as a JSON array, which a derived struct also decodes.
    Array,
    /// Cut after this many bytes.
    Truncated(usize),
    /// With bytes appended.
    Trailing(Vec<u8>),
    /// `Name` given twice.
    DuplicateName,
    /// Bytes instead of the body.
    Raw(Vec<u8>),
    /// Only whitespace.
    Blank(String),
}

fn endpoint_path() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => select(METHODS).prop_map(|m| format!("/{m}")),
        12 => select(vec!["VolumeDriver.Mount", "VolumeDriver.Unmount", "VolumeDriver.Create", "VolumeDriver.Get"])
            .prop_map(|m| format!("/{m}")),
        1 => select(METHODS).prop_map(str::to_owned),
        1 => (select(METHODS), "[/ -~]{1,8}").prop_map(|(m, junk)| format!("/{m}{junk}")),
        1 => (select(METHODS), "/{1,3}").prop_map(|(m, slashes)| format!("{slashes}{m}")),
        1 => ".{0,40}",
        1 => Just("/".to_owned()),
    ]
}

fn wrong_type() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        vec(json_value(), 0..3).prop_map(Value::Array),
        btree_map("[A-Za-z]{1,6}", json_value(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ]
}

fn template() -> impl Strategy<Value = Template> {
    let name = prop_oneof![
        8 => (0usize..4).prop_map(|i| Field::Good(NameChoice::Pool(i))),
        3 => volume_name().prop_map(|n| Field::Good(NameChoice::Fresh(n))),
        1 => Just(Field::Absent),
        1 => wrong_type().prop_map(Field::Wrong),
    ];
    let id = prop_oneof![
        8 => select(vec!["A", "B", "c0ffee", "", "never-mounted"]).prop_map(|s| Field::Good(s.to_owned())),
        2 => ".{0,20}".prop_map(Field::Good),
        1 => Just(Field::Good("i".repeat(5000))),
        1 => Just(Field::Absent),
        1 => wrong_type().prop_map(Field::Wrong),
    ];
    let opts = prop_oneof![
        12 => Just(Field::Absent),
        2 => Just(Field::Good(None)),
        4 => btree_map(option_key(), option_value(), 0..4).prop_map(|m| Field::Good(Some(m))),
        1 => wrong_type().prop_map(Field::Wrong),
        1 => btree_map(option_key(), json_value(), 1..3)
            .prop_map(|m| Field::Wrong(Value::Object(m.into_iter().collect()))),
    ];
    let extra = prop_oneof![
        8 => Just(Vec::new()),
        1 => vec(("[A-Za-z]{1,8}", json_value()), 1..3),
    ];
    let encoding = prop_oneof![
        40 => Just(Encoding::Compact),
        1 => Just(Encoding::Pretty),
        1 => Just(Encoding::Array),
        1 => (0usize..64).prop_map(Encoding::Truncated),
        1 => vec(any::<u8>(), 1..16).prop_map(Encoding::Trailing),
        1 => Just(Encoding::DuplicateName),
        2 => vec(any::<u8>(), 0..300).prop_map(Encoding::Raw),
        1 => "[ \t\r\n]{0,4}".prop_map(Encoding::Blank),
    ];
    (endpoint_path(), name, id, opts, extra, encoding).prop_map(
        |(path, name, id, opts, extra, encoding)| Template {
            path,
            name,
            id,
            opts,
            extra,
            encoding,
        },
    )
}

/// One request with what the check needs to know about it.
#[derive(Clone)]
struct Request {
    path: String,
    body: Vec<u8>,
    shape: Shape,
    name: Option<String>,
    id: Option<String>,
    opts: BTreeMap<String, String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = if body.len() > 400 {
            format!(
                "{}... ({} bytes)",
                &body[..body.floor_char_boundary_compat(400)],
                self.body.len()
            )
        } else {
            body.into_owned()
        };
        write!(f, "POST {:?} {body:?} ({:?})", self.path, self.shape)
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut index: usize) -> usize {
        index = index.min(self.len());
        while !self.is_char_boundary(index) {
            index -= 1;
        }
        index
    }
}

fn method_of(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Which fields an endpoint reads: (`Name`, `ID`, `Opts`).
fn fields_of(method: &str) -> Option<(bool, bool, bool)> {
    match method {
        "Plugin.Activate" | "VolumeDriver.Capabilities" | "VolumeDriver.List" => {
            Some((false, false, false))
        }
        "VolumeDriver.Create" => Some((true, false, true)),
        "VolumeDriver.Mount" | "VolumeDriver.Unmount" => Some((true, true, false)),
        "VolumeDriver.Remove" | "VolumeDriver.Path" | "VolumeDriver.Get" => {
            Some((true, false, false))
        }
        _ => None,
    }
}

fn build(template: Template, pool: &[String]) -> Request {
    let method = method_of(&template.path).to_owned();
    let (reads_name, reads_id, reads_opts) = fields_of(&method).unwrap_or((false, false, false));
    let mut object = serde_json::Map::new();
    let mut malformed = false;
    let mut name = None;
    match template.name {
        Field::Good(choice) => {
            let text = match choice {
                NameChoice::Pool(i) => pool[i % pool.len()].clone(),
                NameChoice::Fresh(text) => text,
            };
            object.insert("Name".into(), Value::String(text.clone()));
            name = Some(text);
        }
        Field::Absent => malformed |= reads_name,
        Field::Wrong(value) => {
            // Shrinking may turn a wrong value into a right one: judge the value, not where it came from.
            if let Value::String(text) = &value {
                name = Some(text.clone());
            } else {
                malformed |= reads_name;
            }
            object.insert("Name".into(), value);
        }
    }
    let mut id = None;
    match template.id {
        Field::Good(text) => {
            object.insert("ID".into(), Value::String(text.clone()));
            id = Some(text);
        }
        Field::Absent => id = Some(String::new()),
        Field::Wrong(value) => {
            if let Value::String(text) = &value {
                id = Some(text.clone());
            } else {
                malformed |= reads_id;
            }
            object.insert("ID".into(), value);
        }
    }
    let mut opts = BTreeMap::new();
    match template.opts {
        Field::Good(Some(map)) => {
            object.insert("Opts".into(), json!(map));
            opts = map;
        }
        Field::Good(None) => {
            object.insert("Opts".into(), Value::Null);
        }
        Field::Absent => {}
        Field::Wrong(value) => {
            match serde_json::from_value::<Option<BTreeMap<String, String>>>(value.clone()) {
                Ok(map) => opts = map.unwrap_or_default(),
                Err(_) => malformed |= reads_opts,
            }
            object.insert("Opts".into(), value);
        }
    }
    let mut shape = if malformed {
        Shape::Malformed
    } else {
        Shape::WellFormed
    };
    for (key, value) in template.extra {
        if !["Name", "ID", "Opts"].contains(&key.as_str()) {
            object.insert(key, value);
            shape = Shape::Junk;
        }
    }
    let value = Value::Object(object);
    let body = match template.encoding {
        Encoding::Compact => serde_json::to_vec(&value).unwrap(),
        Encoding::Pretty => serde_json::to_vec_pretty(&value).unwrap(),
        Encoding::Array => {
            shape = Shape::Junk;
            let Value::Object(map) = value else {
                unreachable!()
            };
            serde_json::to_vec(&map.into_iter().map(|(_, v)| v).collect::<Vec<_>>()).unwrap()
        }
        Encoding::Truncated(cut) => {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            if cut < bytes.len() {
                bytes.truncate(cut);
                shape = Shape::Junk;
            }
            bytes
        }
        Encoding::Trailing(junk) => {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            // JSON's whitespace is narrower than `is_ascii_whitespace` (no form feed).
            if !junk.iter().all(|b| b" \t\r\n".contains(b)) {
                shape = Shape::Junk;
            }
            bytes.extend(junk);
            bytes
        }
        Encoding::DuplicateName => {
            shape = Shape::Junk;
            let mut text = serde_json::to_string(&value).unwrap();
            text.insert_str(1, r#""Name":"secret/dup","#);
            text.into_bytes()
        }
        Encoding::Raw(bytes) => {
            shape = Shape::Junk;
            bytes
        }
        Encoding::Blank(text) => {
            // A blank body is `{}`: fine for the argument-free calls, a missing Name for the others.
            shape = if reads_name {
                Shape::Malformed
            } else {
                Shape::WellFormed
            };
            text.into_bytes()
        }
    };
    Request {
        path: template.path,
        body,
        shape,
        name,
        id,
        opts,
    }
}

/// A pool of names the requests mostly use, often created first, and the requests.
fn requests() -> impl Strategy<Value = (Vec<String>, Vec<Request>)> {
    (
        vec(pool_name(), 1..4),
        any::<bool>(),
        vec(template(), 1..16),
    )
        .prop_map(|(pool, create_first, templates)| {
            let mut requests = Vec::new();
            if create_first {
                for name in &pool {
                    let body = json!({ "Name": name }).to_string().into_bytes();
                    requests.push(Request {
                        path: "/VolumeDriver.Create".to_owned(),
                        body,
                        shape: Shape::WellFormed,
                        name: Some(name.clone()),
                        id: None,
                        opts: BTreeMap::new(),
                    });
                }
            }
            requests.extend(templates.into_iter().map(|t| build(t, &pool)));
            (pool, requests)
        })
}

// ---------------------------------------------------------------------------------------------------------------
// The plugin target

/// What the volumes should look like: records and per-volume mount counts per ID.
#[derive(Default, Debug)]
struct Model {
    records: BTreeSet<String>,
    mounts: BTreeMap<String, BTreeMap<String, usize>>,
    /// False once a junk body was accepted by a call that changes state: the model can no longer follow.
    synced: bool,
}

const CREDENTIAL_OPTIONS: &[&str] = &["token", "vault_token", "secret_id", "password", "role_id"];

fn err_text(reply: &Reply) -> Option<&str> {
    reply.body.get("Err").and_then(Value::as_str)
}

fn call(rt: &tokio::runtime::Runtime, plugin: &Plugin, path: &str, body: &[u8]) -> Reply {
    rt.block_on(plugin.handle(path, body))
}

/// Invariants of every reply, whatever the request.
fn check_reply(request: &Request, reply: &Reply) -> Result<(), TestCaseError> {
    let text = serde_json::to_string(&reply.body)
        .map_err(|e| TestCaseError::fail(format!("reply is not serialisable: {e}")))?;
    let reparsed: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("reply is not valid JSON: {e}: {text}")))?;
    prop_assert_eq!(&reparsed, &reply.body);
    prop_assert!(reply.body.is_object(), "reply is not an object: {}", text);
    prop_assert!(
        [200, 400, 404, 500].contains(&reply.status),
        "status {}",
        reply.status
    );
    if reply.status != 200 {
        let err = err_text(reply);
        prop_assert!(
            err.is_some_and(|e| !e.trim().is_empty()),
            "error reply without a non-empty Err: {}",
            text
        );
        prop_assert!(
            !err.unwrap_or_default().starts_with("internal error"),
            "the handler panicked: {}",
            text
        );
    } else if let Some(err) = reply.body.get("Err") {
        prop_assert_eq!(err, &json!(""), "a success with an error: {}", text);
    }
    let known = fields_of(method_of(&request.path)).is_some();
    prop_assert_eq!(reply.status == 404, !known, "404 iff unknown: {}", text);
    // Credentials given as options are never echoed.
    for (key, value) in &request.opts {
        let credential = CREDENTIAL_OPTIONS.contains(&key.as_str()) && value.starts_with("hvs.");
        if credential
            && !request
                .name
                .as_deref()
                .unwrap_or_default()
                .contains(value.as_str())
        {
            prop_assert!(
                !text.contains(value.as_str()),
                "the value of option {:?} is echoed: {}",
                key,
                text
            );
        }
    }
    Ok(())
}

/// Checks `reply` against the model and updates the model.
fn check_model(
    model: &mut Model,
    request: &Request,
    reply: &Reply,
    rt: &tokio::runtime::Runtime,
    plugin: &Plugin,
) -> Result<(), TestCaseError> {
    let method = method_of(&request.path);
    let Some((reads_name, _, _)) = fields_of(method) else {
        return Ok(());
    };
    let text = reply.body.to_string();
    match request.shape {
        Shape::Malformed => {
            prop_assert_eq!(reply.status, 400, "malformed body accepted: {}", text);
            prop_assert!(
                err_text(reply)
                    .unwrap_or_default()
                    .contains("malformed JSON"),
                "{}",
                text
            );
            return Ok(());
        }
        Shape::Junk => {
            let changes_state = matches!(
                method,
                "VolumeDriver.Create"
                    | "VolumeDriver.Remove"
                    | "VolumeDriver.Mount"
                    | "VolumeDriver.Unmount"
            );
            if reply.status == 200 && changes_state {
                model.synced = false;
            }
            return Ok(());
        }
        Shape::WellFormed => {}
    }
    prop_assert_ne!(reply.status, 400, "well-formed body refused: {}", text);
    if !reads_name {
        prop_assert_eq!(reply.status, 200, "{}", text);
        if method == "VolumeDriver.List" && model.synced {
            let names: BTreeSet<String> = reply.body["Volumes"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|v| v["Name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            prop_assert_eq!(&names, &model.records, "List: {}", text);
        }
        return Ok(());
    }
    let name = request.name.clone().unwrap_or_default();
    let id = request.id.clone().unwrap_or_default();
    let exists = model.records.contains(&name);
    let mounted = model.mounts.get(&name).is_some_and(|ids| !ids.is_empty());
    let mountpoint = Path::new(MOUNT_ROOT)
        .join(escape_component(&name))
        .display()
        .to_string();
    match method {
        "VolumeDriver.Create" => {
            let name_ok = VaultPath::from_volume_name(&name);
            let options_ok = VolumeOptions::parse(&request.opts);
            let valid = name_ok.is_ok() && options_ok.is_ok();
            prop_assert_eq!(
                reply.status == 200,
                valid,
                "Create of {:?} {:?}: {}",
                name,
                request.opts,
                text
            );
            let err = err_text(reply).unwrap_or_default();
            if name_ok.is_err() {
                prop_assert!(err.contains("invalid volume name"), "{}", err);
            } else if options_ok.is_err() {
                prop_assert!(err.contains("option"), "{}", err);
                // Options are checked in order: the first bad one is the one reported.
                let first_bad = request.opts.iter().find(|(k, v)| {
                    VolumeOptions::parse(&BTreeMap::from([((*k).clone(), (*v).clone())])).is_err()
                });
                if first_bad.is_some_and(|(k, _)| CREDENTIAL_OPTIONS.contains(&k.as_str())) {
                    prop_assert!(err.contains("config"), "{}", err);
                }
            }
            if valid {
                model.records.insert(name.clone());
                // An accepted name round-trips through Get, Path and List exactly.
                let body = json!({ "Name": name }).to_string();
                let got = call(rt, plugin, "/VolumeDriver.Get", body.as_bytes());
                prop_assert_eq!(got.status, 200, "{}", got.body);
                prop_assert_eq!(&got.body["Volume"]["Name"], &json!(name));
                let path = call(rt, plugin, "/VolumeDriver.Path", body.as_bytes());
                prop_assert_eq!(path.status, 200, "{}", path.body);
            }
        }
        "VolumeDriver.Remove" => {
            prop_assert_eq!(reply.status == 200, exists && !mounted, "{}", text);
            if reply.status == 200 {
                model.records.remove(&name);
            } else if exists {
                prop_assert!(
                    err_text(reply).unwrap_or_default().contains("mounted"),
                    "{}",
                    text
                );
            }
        }
        "VolumeDriver.Mount" => {
            prop_assert_eq!(reply.status == 200, exists, "{}", text);
            if exists {
                prop_assert_eq!(&reply.body["Mountpoint"], &json!(mountpoint));
                *model.mounts.entry(name).or_default().entry(id).or_default() += 1;
            }
        }
        "VolumeDriver.Unmount" => {
            let ids = model.mounts.entry(name.clone()).or_default();
            match ids.get_mut(&id) {
                Some(count) => {
                    prop_assert_eq!(reply.status, 200, "{}", text);
                    *count -= 1;
                    if *count == 0 {
                        ids.remove(&id);
                    }
                }
                // An ID never mounted (or already released) changes nothing: a no-op or an Err.
                None => prop_assert!([200, 500].contains(&reply.status), "{}", text),
            }
        }
        "VolumeDriver.Path" | "VolumeDriver.Get" => {
            prop_assert_eq!(reply.status == 200, exists, "{}", text);
            if exists && model.synced {
                let (got_mountpoint, got_ids) = if method == "VolumeDriver.Get" {
                    prop_assert_eq!(&reply.body["Volume"]["Name"], &json!(name));
                    (
                        &reply.body["Volume"]["Mountpoint"],
                        Some(&reply.body["Volume"]["Status"]["Mounts"]),
                    )
                } else {
                    (&reply.body["Mountpoint"], None)
                };
                let expected = if mounted { mountpoint } else { String::new() };
                prop_assert_eq!(got_mountpoint, &json!(expected), "{}", text);
                if let Some(got_ids) = got_ids {
                    let ids = model.mounts.get(&name).map_or(0, BTreeMap::len);
                    prop_assert_eq!(got_ids, &json!(ids), "{}", text);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// How often each endpoint answered each status, to show what a run covered.
type Coverage = Mutex<BTreeMap<(String, u16), usize>>;

fn run_plugin_case(
    rt: &tokio::runtime::Runtime,
    requests: &[Request],
    coverage: &Coverage,
) -> Result<(), TestCaseError> {
    let harness = harness(rt);
    let mut model = Model {
        synced: true,
        ..Model::default()
    };
    for request in requests {
        let reply = call(rt, &harness.plugin, &request.path, &request.body);
        let endpoint = match fields_of(method_of(&request.path)) {
            Some(_) => method_of(&request.path).to_owned(),
            None => "(unknown)".to_owned(),
        };
        *coverage
            .lock()
            .unwrap()
            .entry((endpoint, reply.status))
            .or_default() += 1;
        check_reply(request, &reply)
            .map_err(|e| TestCaseError::fail(format!("{request:?}: {e}")))?;
        if model.synced {
            check_model(&mut model, request, &reply, rt, &harness.plugin)
                .map_err(|e| TestCaseError::fail(format!("{request:?}: {e}")))?;
        }
        let violations = harness.mounter.violations();
        prop_assert!(violations.is_empty(), "{:?}: {:?}", request, violations);
    }
    if model.synced {
        let expected: BTreeSet<PathBuf> = model
            .mounts
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(name, _)| Path::new(MOUNT_ROOT).join(escape_component(name)))
            .collect();
        let live: BTreeSet<PathBuf> = harness.mounter.live().into_iter().collect();
        prop_assert_eq!(&live, &expected);
    }
    Ok(())
}

#[test]
fn plugin_requests_never_panic_and_always_answer_json() {
    let tally = Tally::new("plugin_requests");
    let rt = runtime();
    let coverage = Coverage::default();
    proptest!(config(), |((_pool, requests) in requests())| {
        tally.case();
        run_plugin_case(&rt, &requests, &coverage)?;
    });
    eprintln!(
        "plugin replies by endpoint and status: {:?}",
        coverage.lock().unwrap()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The name validation target

/// Undoes [`escape_component`], so injectivity is checked for every name, not only among the generated ones.
fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = escaped.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn check_volume_name(name: &str) -> Result<(), TestCaseError> {
    let parsed = VaultPath::from_volume_name(name);
    let escaped = escape_component(name);
    prop_assert!(!escaped.contains('/') && escaped != "." && escaped != "..");
    prop_assert!(!escaped.is_empty() || name.is_empty());
    prop_assert!(!escaped.chars().any(|c| c == '\0' || c.is_control()));
    // Injective: the escape decodes back to the name. (A long name may instead get a digest-based component, as
    // systemd unit names do; then the pairwise check over the generated set is what remains.)
    let plain_len: usize = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                1
            } else {
                3
            }
        })
        .sum();
    if plain_len <= SHORT_ESCAPE {
        let unescaped = unescape(&escaped);
        prop_assert_eq!(unescaped.as_deref(), Some(name), "not injective");
    }
    let Ok(path) = parsed else {
        return Ok(());
    };
    let text = path.as_str();
    prop_assert!(name.len() <= MAX_VOLUME_NAME_BYTES);
    prop_assert_eq!(text, name.strip_suffix('/').unwrap_or(name));
    prop_assert!(!text.is_empty());
    for segment in path.segments() {
        prop_assert!(
            !segment.is_empty() && segment != "." && segment != "..",
            "segment {:?} of {:?}",
            segment,
            name
        );
    }
    prop_assert!(!text.chars().any(char::is_control), "{:?}", name);
    prop_assert!(!text.contains('#'), "{:?}", name);
    // The escaped name is one path component: it must fit in NAME_MAX with the state directory's suffix.
    prop_assert!(
        escaped.len() + STATE_SUFFIX.len() <= NAME_MAX,
        "an accepted name of {} bytes escapes to a {}-byte component: with {:?} that is past NAME_MAX ({}): {:?}",
        name.len(),
        escaped.len(),
        STATE_SUFFIX,
        NAME_MAX,
        escaped
    );
    Ok(())
}

#[test]
fn volume_names_validate_and_escape_safely() {
    let tally = Tally::new("volume_names");
    proptest!(config(), |(names in vec(volume_name(), 1..8))| {
        tally.case();
        // Near neighbours of each name: with a trailing '/', with '/' spelled as its escape, and with '%' doubled.
        let mut all = BTreeSet::new();
        for name in &names {
            all.insert(name.clone());
            all.insert(format!("{name}/"));
            all.insert(name.replace('/', "%2F"));
            all.insert(name.replace('%', "%25"));
        }
        let mut escaped = BTreeMap::new();
        for name in &all {
            check_volume_name(name)?;
            if let Some(other) = escaped.insert(escape_component(name), name.clone()) {
                prop_assert_eq!(&other, name, "two names escape alike");
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// The path mapping target

fn truncate_to(mut text: String, limit: usize) -> String {
    let cut = text.floor_char_boundary_compat(limit);
    text.truncate(cut);
    text
}

/// File names the kernel could hand over (a component of up to 255 bytes, odd bytes read lossily), and some it
/// never would (slashes).
fn file_name() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        4 => "[a-z0-9._-]{1,10}",
        2 => segment(),
        1 => "[./]{1,6}",
        1 => "[ -~]{0,12}",
        1 => Just(String::new()),
    ];
    let version = prop_oneof![
        3 => Just(String::new()),
        2 => "@[0-9]{1,3}",
        1 => "@0{1,3}",
        1 => "@[0-9]{19,25}",
        1 => "@[a-z0-9@]{0,4}",
    ];
    let view = prop_oneof![
        3 => Just(String::new()),
        1 => Just("#".to_owned()),
        2 => "#[a-z_]{1,8}",
        1 => "#.{0,12}",
        1 => "#[#@/.]{0,4}",
    ];
    let structured = (key, version, view).prop_map(|(k, v, w)| format!("{k}{v}{w}"));
    prop_oneof![
        4 => structured,
        3 => vec(any::<u8>(), 0..=255).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => select(vec![
            "..", ".", "", "#", "@", "@1", "..@1", ".@1#x", "..#", "../x", "x/..", "/", "a/../../etc/passwd",
            "./x", "a//b", "x/", "/x", "db@0", "db@18446744073709551615", "db@18446744073709551616",
        ]).prop_map(str::to_owned),
        1 => ".{0,64}",
        1 => vec(segment(), 1..4).prop_map(|s| s.join("/")),
        1 => (select(vec!['a', '.', '#', '@', '\u{1}']), 250usize..260).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .prop_map(|name| truncate_to(name, NAME_MAX))
}

fn check_file_name(dir: &VaultPath, name: &str) -> Result<(), TestCaseError> {
    let Ok(parsed) = FileName::parse(name) else {
        return Ok(());
    };
    let secret_ref = parsed.secret_ref(dir);
    let resolved = secret_ref.path.as_str();
    let prefix = format!("{}/", dir.as_str());
    prop_assert!(
        resolved.starts_with(&prefix) && resolved.len() > prefix.len(),
        "{:?} resolves to {:?}, outside {:?}",
        name,
        resolved,
        dir
    );
    prop_assert!(
        !resolved
            .split('/')
            .any(|s| s == ".." || s == "." || s.is_empty()),
        "{:?} resolves to {:?}, which has a '..', '.' or empty segment",
        name,
        resolved
    );
    // Every segment of what it resolves to is a valid one (the whole may be longer than a volume name may be).
    for segment in resolved.split('/') {
        prop_assert_eq!(
            check_segment(segment),
            Ok(()),
            "{:?} in {:?}",
            segment,
            resolved
        );
    }
    prop_assert_eq!(&secret_ref.path, &parsed.secret_path(dir));
    prop_assert_eq!(secret_ref.version, parsed.version);
    prop_assert!(!parsed.key.contains('#'));
    prop_assert!(parsed.version != Some(0));
    if let View::Field(field) = &parsed.view {
        prop_assert!(!field.is_empty() && !field.chars().any(char::is_control));
    }
    // `KEY@N`: the key is KEY and the version N, unless N is 0 (the latest). A version that is no number, such as
    // one past u64, is not silently the latest version of KEY.
    let key_part = name.split_once('#').map_or(name, |(key, _)| key);
    if let Some((base, digits)) = key_part.rsplit_once('@') {
        if !base.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            match digits.parse::<u64>() {
                Ok(0) => prop_assert_eq!((parsed.key.as_str(), parsed.version), (base, None)),
                Ok(n) => prop_assert_eq!((parsed.key.as_str(), parsed.version), (base, Some(n))),
                Err(_) => prop_assert!(
                    !(parsed.key == base && parsed.version.is_none()),
                    "{:?}: an out-of-range version reads the latest version of {:?}",
                    name,
                    base
                ),
            }
        }
    }
    Ok(())
}

#[test]
fn file_names_never_resolve_outside_the_volume() {
    let tally = Tally::new("file_names");
    let volume = prop_oneof![
        3 => "(secret|kv)(/[a-z0-9-]{1,8}){0,3}/?",
        1 => volume_name(),
    ]
    // An invalid volume name has no mount: use a plain one instead.
    .prop_map(|name| VaultPath::from_volume_name(&name).unwrap_or_else(|_| secret_app()));
    proptest!(config(), |(dir in volume, names in vec(file_name(), 1..6))| {
        tally.case();
        for name in &names {
            check_file_name(&dir, name)?;
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// The secret rendering target

fn check_render(fields: &BTreeMap<String, Value>, view: &View) -> Result<(), TestCaseError> {
    let secret = Secret::new(fields.clone());
    let rendered = secret.render(view);
    let as_file = |value: &Value| -> Vec<u8> {
        match value {
            Value::String(text) => text.as_bytes().to_vec(),
            other => serde_json::to_vec(other).unwrap(),
        }
    };
    let whole = serde_json::to_vec(fields).unwrap();
    let expected = match view {
        View::Field(name) => fields.get(name).map(as_file),
        View::Json => Some(whole.clone()),
        View::Default => match fields.get("value") {
            Some(value) => Some(as_file(value)),
            None if fields.len() == 1 => fields.values().next().map(as_file),
            None => Some(whole.clone()),
        },
    };
    prop_assert_eq!(rendered.as_ref().map(|b| b.to_vec()), expected);
    if *view == View::Json {
        let parsed: BTreeMap<String, Value> = serde_json::from_slice(&whole)
            .map_err(|e| TestCaseError::fail(format!("JSON view is not JSON: {e}")))?;
        prop_assert_eq!(
            parsed.keys().collect::<Vec<_>>(),
            fields.keys().collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[test]
fn secrets_render_any_json() {
    let tally = Tally::new("secret_render");
    let fields = prop_oneof![
        btree_map(".{0,8}", json_value(), 0..6),
        btree_map(
            select(vec!["value", "password", "user", ""]).prop_map(str::to_owned),
            json_value(),
            0..4
        ),
    ];
    let view = prop_oneof![
        Just(View::Default),
        Just(View::Json),
        ".{0,8}".prop_map(View::Field),
        select(vec!["value", "password", "user", ""]).prop_map(|f| View::Field(f.to_owned())),
    ];
    proptest!(config(), |(fields in fields, view in view)| {
        tally.case();
        check_render(&fields, &view)?;
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Regression cases: inputs the fuzz targets found, and edge inputs worth pinning.

fn assert_ok(result: Result<(), TestCaseError>) {
    if let Err(error) = result {
        panic!("{error}");
    }
}

fn secret_app() -> VaultPath {
    VaultPath::from_volume_name("secret/app-1").unwrap()
}

/// Found by `file_names_never_resolve_outside_the_volume`: a name holding `/` passes `check_segment` whole, so
/// `../x` resolves to `secret/app-1/../x`. The kernel never passes a `/` in a lookup, so FUSE cannot reach it, but
/// `FileName::parse` promises a name that cannot climb out of its directory.
#[test]
fn regression_a_file_name_with_a_slash_never_climbs_out() {
    for name in [
        "../x",
        "x/..",
        "a/../../etc/passwd",
        "./x",
        "a//b",
        "x/",
        "/x",
        "../x#user",
        "../x@2",
    ] {
        assert_ok(check_file_name(&secret_app(), name));
    }
}

/// Found by `file_names_never_resolve_outside_the_volume`: `db@N` with N past u64 drops the suffix and reads the
/// latest version of `db`, as if the container had asked for `db`.
#[test]
fn regression_an_out_of_range_version_is_not_the_latest() {
    for name in [
        "db@18446744073709551616",
        "db@99999999999999999999#user",
        "db@0000000000000000000000000001",
    ] {
        assert_ok(check_file_name(&secret_app(), name));
    }
}

/// Found by `volume_names_validate_and_escape_safely`: names up to 1024 bytes are accepted, but the mountpoint and
/// state file are named `escape_component(name)` (up to 3 bytes per byte) plus `.json`, and Linux refuses a file
/// name longer than 255 bytes. A 250-byte name (or 84 bytes of `.`/`/`) passes Create's validation and then fails
/// with "File name too long".
#[test]
fn regression_an_accepted_name_escapes_to_a_name_linux_can_create() {
    for name in [
        sized("secret/", 'a', 250),
        sized("secret/", 'a', MAX_VOLUME_NAME_BYTES),
        sized("secret/a", '.', 100),
        "secret/".to_owned() + &"a/".repeat(60),
    ] {
        assert!(VaultPath::from_volume_name(&name).is_ok());
        assert_ok(check_volume_name(&name));
    }
}

#[test]
fn regression_edge_volume_names() {
    for name in [
        "",
        "/",
        "//",
        ".",
        "..",
        "secret/..",
        "secret/.",
        "secret/../x",
        "secret/./x",
        "/secret",
        "secret//x",
        "secret/x//",
        "secret/a\0b",
        "secret/a\u{85}b",
        "secret/\u{200b}",
        "secret/a#b",
        "secret/é/ü",
        "%2F",
        "secret/%2E%2E",
    ] {
        assert_ok(check_volume_name(name));
    }
    assert_eq!(escape_component("%2F"), "%252F");
    assert_ne!(escape_component("a/b"), escape_component("a%2Fb"));
    assert!(VaultPath::from_volume_name(&sized("secret/", 'a', 2000)).is_err());
}

#[test]
fn regression_plugin_bodies() {
    let rt = runtime();
    let h = harness(&rt);
    let cases: &[(&str, &[u8], u16)] = &[
        ("/VolumeDriver.Create", b"", 400),
        ("/VolumeDriver.Create", b"null", 400),
        ("/VolumeDriver.Create", b"[]", 400),
        ("/VolumeDriver.Create", b"\xff\xfe", 400),
        (
            "/VolumeDriver.Create",
            br#"{"Name":"secret/a","Opts":{"x":1}}"#,
            400,
        ),
        (
            "/VolumeDriver.Create",
            br#"{"Name":"secret/a","Opts":[]}"#,
            400,
        ),
        (
            "/VolumeDriver.Create",
            br#"{"Name":"secret/a","Name":"secret/b"}"#,
            400,
        ),
        ("/VolumeDriver.Mount", br#"{"Name":"secret/a","ID":7}"#, 400),
        (
            "/VolumeDriver.Mount",
            br#"{"Name":"secret/a","ID":null}"#,
            400,
        ),
        ("/VolumeDriver.List", b"{", 400),
        ("/VolumeDriver.List", b"[1,{\"a\":[[[[]]]]}]", 200),
        ("/Plugin.Activate", b" \r\n\t", 200),
        ("", b"{}", 404),
        ("/volumedriver.create", b"{}", 404),
        ("/VolumeDriver.Create/", b"{}", 404),
        ("///VolumeDriver.List", b"{}", 200),
    ];
    for (path, body, status) in cases {
        let reply = call(&rt, &h.plugin, path, body);
        assert_eq!(reply.status, *status, "{path} {body:?}: {}", reply.body);
        if *status != 200 {
            assert!(
                !err_text(&reply).unwrap_or_default().is_empty(),
                "{}",
                reply.body
            );
        }
    }
    // A deeply nested body is refused by serde_json's recursion limit, not by a stack overflow.
    let deep = "[".repeat(100_000);
    let reply = call(&rt, &h.plugin, "/VolumeDriver.List", deep.as_bytes());
    assert_eq!(reply.status, 400, "{}", reply.body);
}
