//! Path mapping: volume names, Vault paths and the file names a container uses.
//!
//! A volume name is a Vault path (`secret/app-1`, a trailing `/` allowed). A file name under the mount names a secret
//! relative to that path, optionally with a view suffix:
//!
//! | file name        | content                                                            |
//! |------------------|--------------------------------------------------------------------|
//! | `KEY`            | the `value` field, else the only field, else all fields as JSON    |
//! | `KEY#FIELD`      | that one field                                                      |
//! | `KEY#`           | all fields as one JSON object                                       |
//! | `KEY@N`, `KEY@N#FIELD`, `KEY@N#` | the same views of version N (KV v2)                    |
//!
//! Every name resolves by itself, so nothing ever needs a directory listing. A key whose name itself ends in `@`
//! and digits can only be read by its version syntax.

use std::fmt;

/// The longest volume name (a Vault path) accepted at Create.
pub const MAX_VOLUME_NAME_BYTES: usize = 1024;

/// Separates a key from a view selector in a file name.
pub const VIEW_SEPARATOR: char = '#';

/// Why a volume name or file name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the volume name is empty; name it after a Vault path such as secret/app-1")]
    Empty,
    #[error("the volume name is {0} bytes long; the limit is {MAX_VOLUME_NAME_BYTES}")]
    TooLong(usize),
    #[error("the name contains a NUL or control character; Vault paths are printable text")]
    ControlCharacter,
    #[error("the name has an empty path segment (a leading '/' or '//'); write it as mount/path")]
    EmptySegment,
    #[error("the name has a '.' or '..' segment; paths may not climb out of their mount")]
    DotSegment,
    #[error(
        "the name contains '{VIEW_SEPARATOR}', which is reserved for field selection in file names"
    )]
    ReservedCharacter,
    #[error("a file name may not contain '/'")]
    Slash,
    #[error("the version after '@' is not a number between 1 and {}", u64::MAX)]
    BadVersion,
}

/// A validated Vault path without leading or trailing `/`, such as `secret/app-1`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultPath(String);

impl VaultPath {
    /// Parses a volume name. A single trailing `/` is accepted and means the same path.
    pub fn from_volume_name(name: &str) -> Result<Self, NameError> {
        if name.len() > MAX_VOLUME_NAME_BYTES {
            return Err(NameError::TooLong(name.len()));
        }
        let trimmed = name.strip_suffix('/').unwrap_or(name);
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        for segment in trimmed.split('/') {
            check_segment(segment)?;
        }
        Ok(VaultPath(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path of a child segment that was already checked by [`check_segment`].
    fn join(&self, segment: &str) -> VaultPath {
        VaultPath(format!("{}/{}", self.0, segment))
    }

    /// The path segments, first to last.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for VaultPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VaultPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultPath({:?})", self.0)
    }
}

/// Checks one path segment: non-empty, not `.`/`..`, printable, and without the view separator.
pub fn check_segment(segment: &str) -> Result<(), NameError> {
    if segment.is_empty() {
        return Err(NameError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(NameError::DotSegment);
    }
    if segment.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    if segment.contains(VIEW_SEPARATOR) {
        return Err(NameError::ReservedCharacter);
    }
    if segment.contains('/') {
        return Err(NameError::Slash);
    }
    Ok(())
}

/// Which part of a secret a file shows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum View {
    /// `value`, else the only field, else the JSON object.
    Default,
    /// One named field.
    Field(String),
    /// Every field as one JSON object.
    Json,
}

/// A secret to read: its path, and a pinned KV v2 version or the latest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    pub path: VaultPath,
    pub version: Option<u64>,
}

impl SecretRef {
    pub fn latest(path: VaultPath) -> Self {
        SecretRef {
            path,
            version: None,
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(version) => write!(f, "{}@{version}", self.path),
            None => write!(f, "{}", self.path),
        }
    }
}

/// What a file name inside a directory of the mount refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileName {
    /// The secret (or folder) name within the directory.
    pub key: String,
    /// A pinned KV v2 version (`KEY@N`).
    pub version: Option<u64>,
    /// The view; a name with a view or a version can only be a file, never a folder.
    pub view: View,
}

impl FileName {
    /// Parses a name the kernel looked up. `KEY`, `KEY#FIELD` or `KEY#`.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let (key, view) = match name.split_once(VIEW_SEPARATOR) {
            None => (name, View::Default),
            Some((key, "")) => (key, View::Json),
            Some((key, field)) => {
                if field.chars().any(char::is_control) {
                    return Err(NameError::ControlCharacter);
                }
                (key, View::Field(field.to_owned()))
            }
        };
        let (key, version) = match key.rsplit_once('@') {
            Some((base, digits))
                if !base.is_empty()
                    && !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit()) =>
            {
                // A version too large for u64 is refused, never read as "the latest".
                let version = digits.parse::<u64>().map_err(|_| NameError::BadVersion)?;
                (base, Some(version).filter(|v| *v > 0))
            }
            _ => (key, None),
        };
        check_segment(key)?;
        Ok(FileName {
            key: key.to_owned(),
            version,
            view,
        })
    }

    /// The secret path this name refers to under `dir`.
    pub fn secret_path(&self, dir: &VaultPath) -> VaultPath {
        dir.join(&self.key)
    }

    /// The secret (path and version) this name refers to under `dir`.
    pub fn secret_ref(&self, dir: &VaultPath) -> SecretRef {
        SecretRef {
            path: self.secret_path(dir),
            version: self.version,
        }
    }
}

/// Checks a Vault Enterprise namespace (`team-a`, `org/team-a`): segments of letters, digits, `-` and `_`, up to
/// 255 bytes; no `.` or `..` segments, so a namespace cannot climb out of the configured one.
pub fn validate_namespace(namespace: &str) -> Result<(), String> {
    let trimmed = namespace.trim_matches('/');
    if trimmed.is_empty() || trimmed.len() > 255 {
        return Err("a namespace is 1 to 255 bytes".to_owned());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{namespace:?}: namespace segments are letters, digits, '-' and '_', separated by '/'"
            ));
        }
    }
    Ok(())
}

/// A collision-free, single-component file name for a volume name, for mountpoints and state files.
///
/// Bytes other than ASCII letters, digits, `-` and `_` become `%XX`, so the mapping is injective and never yields
/// `.`, `..` or a `/`.
///
/// Linux caps a file name at 255 bytes and escaping can triple a name's length, so a long escaped name keeps a
/// readable 64-byte prefix and ends with the SHA-256 of the whole name (still one component, still injective).
pub fn escape_component(name: &str) -> String {
    const LONGEST: usize = 200;
    let escaped = escape_all(name);
    if escaped.len() <= LONGEST {
        return escaped;
    }
    // The escaped text is ASCII, so any byte index is a character boundary. It never holds a `.` (escaped as `%2E`),
    // so a hashed name is never another name's escape.
    format!("{}.sha256-{}", &escaped[..64], sha256_hex(name))
}

/// The SHA-256 of `text`, in lowercase hex: what long names are replaced by where a name's length is limited.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn escape_all(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespaces_are_plain_segments() {
        for good in ["team-a", "org/team_b", "/admin/"] {
            assert!(super::validate_namespace(good).is_ok(), "{good}");
        }
        for bad in ["", "/", "a//b", "../x", "a/./b", "a b", "a\nb", "ns%2f"] {
            assert!(super::validate_namespace(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn trailing_slash_means_the_same_path() {
        let a = VaultPath::from_volume_name("secret/app-1/").unwrap();
        let b = VaultPath::from_volume_name("secret/app-1").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "secret/app-1");
    }

    #[test]
    fn bad_volume_names_are_refused_with_reasons() {
        let long = "a".repeat(MAX_VOLUME_NAME_BYTES + 1);
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("/", NameError::Empty),
            ("secret/../sys", NameError::DotSegment),
            ("secret/./x", NameError::DotSegment),
            ("..", NameError::DotSegment),
            ("/secret/x", NameError::EmptySegment),
            ("secret//x", NameError::EmptySegment),
            ("secret/x//", NameError::EmptySegment),
            ("secret/a\0b", NameError::ControlCharacter),
            ("secret/a\nb", NameError::ControlCharacter),
            ("secret/a\u{7f}", NameError::ControlCharacter),
            ("secret/a#b", NameError::ReservedCharacter),
            (&long, NameError::TooLong(MAX_VOLUME_NAME_BYTES + 1)),
        ];
        for (name, expected) in cases {
            assert_eq!(
                VaultPath::from_volume_name(name).as_ref(),
                Err(expected),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_name_of_exactly_the_limit_is_accepted() {
        let name = "a".repeat(MAX_VOLUME_NAME_BYTES);
        assert!(VaultPath::from_volume_name(&name).is_ok());
    }

    #[test]
    fn file_names_select_views() {
        let dir = VaultPath::from_volume_name("secret/app-1").unwrap();
        let plain = FileName::parse("db-password").unwrap();
        assert_eq!(plain.view, View::Default);
        assert_eq!(plain.secret_path(&dir).as_str(), "secret/app-1/db-password");

        let field = FileName::parse("db#user").unwrap();
        assert_eq!(field.view, View::Field("user".into()));
        assert_eq!(field.secret_path(&dir).as_str(), "secret/app-1/db");

        let json = FileName::parse("db#").unwrap();
        assert_eq!(json.view, View::Json);
        assert_eq!(json.key, "db");
    }

    #[test]
    fn a_version_suffix_pins_a_kv_v2_version() {
        let dir = VaultPath::from_volume_name("secret/app-1").unwrap();
        let pinned = FileName::parse("db@3#user").unwrap();
        assert_eq!((pinned.key.as_str(), pinned.version), ("db", Some(3)));
        assert_eq!(pinned.view, View::Field("user".into()));
        assert_eq!(pinned.secret_ref(&dir).to_string(), "secret/app-1/db@3");
        assert_eq!(FileName::parse("db@12").unwrap().version, Some(12));
        assert_eq!(FileName::parse("db@2#").unwrap().view, View::Json);
        // Not a version: an @ followed by anything but digits stays part of the key.
        let email = FileName::parse("ops@example.com").unwrap();
        assert_eq!(
            (email.key.as_str(), email.version),
            ("ops@example.com", None)
        );
        assert_eq!(FileName::parse("@3").unwrap().key, "@3");
        assert_eq!(FileName::parse("db@").unwrap().key, "db@");
        let zero = FileName::parse("db@0").unwrap();
        assert_eq!(
            (zero.key.as_str(), zero.version),
            ("db", None),
            "version 0 is the latest, as in Vault"
        );
    }

    #[test]
    fn file_names_never_climb_out() {
        for name in ["..", ".", "", "#x", "..#x", "a\u{1}b", "..@2", ".@1#x"] {
            assert!(FileName::parse(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn escaping_is_injective_and_safe() {
        let names = [
            "secret/app-1/",
            "secret/app-1",
            "secret%2Fapp-1",
            "..",
            "a.b",
            "a_b",
        ];
        let escaped: Vec<String> = names.iter().map(|n| escape_component(n)).collect();
        for (i, a) in escaped.iter().enumerate() {
            assert!(!a.contains('/') && a != "." && a != "..", "{a}");
            for b in &escaped[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(escape_component("secret/app-1"), "secret%2Fapp-1");
    }
}

#[cfg(test)]
mod long_name_tests {
    use super::*;

    #[test]
    fn long_names_escape_to_one_bounded_component_and_stay_distinct() {
        let a = format!("secret/{}", "a".repeat(1000));
        let b = format!("secret/{}b", "a".repeat(999));
        let (ea, eb) = (escape_component(&a), escape_component(&b));
        assert!(ea.len() <= 200 && eb.len() <= 200, "{ea}");
        assert_ne!(ea, eb);
        assert!(!ea.contains('/') && ea.starts_with("secret%2Faaaa"));
        let dots = ".".repeat(100);
        assert!(escape_component(&dots).len() <= 200);
        assert_eq!(escape_component("secret/app-1"), "secret%2Fapp-1");
    }

    #[test]
    fn a_name_spelled_like_a_hashed_component_escapes_to_another_one() {
        let long = format!("secret/{}", "a".repeat(1000));
        let hashed = escape_component(&long);
        let (prefix, hex) = hashed.split_once(".sha256-").unwrap();
        assert_eq!(hex, sha256_hex(&long));
        let literal = format!("{prefix}.sha256-{hex}");
        assert_ne!(escape_component(&literal), hashed);
    }

    #[test]
    fn file_names_with_a_slash_or_an_oversized_version_are_refused() {
        assert_eq!(FileName::parse("../x"), Err(NameError::Slash));
        assert_eq!(FileName::parse("a/b"), Err(NameError::Slash));
        assert_eq!(
            FileName::parse("db@99999999999999999999"),
            Err(NameError::BadVersion)
        );
        assert_eq!(FileName::parse("db@7").unwrap().version, Some(7));
    }
}
