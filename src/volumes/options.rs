//! The options a volume is created with (`docker volume create -o KEY=VALUE`): parsed, checked, and refused when
//! they look like credentials.

use std::collections::BTreeMap;

use super::VolumeError;

/// Options a volume may be created with (`docker volume create -o KEY=VALUE`). Docker stores them and shows them in
/// `docker volume inspect`, so no option ever carries a credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeOptions {
    /// This volume's refresh interval, overriding the config's `refresh_interval`.
    pub refresh_interval: Option<std::time::Duration>,
    /// A Vault Enterprise namespace, a child of the configured `vault.namespace`, that this volume reads in.
    pub namespace: Option<String>,
    /// Owner of the files and the directory (numeric, as in the container).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits of the files, parsed as octal (`0400`).
    pub mode: Option<u16>,
    /// Permission bits of the directory, parsed as octal (`0500`).
    pub dir_mode: Option<u16>,
}

/// Parses permission bits written in octal (`0440`, `440`, `0o440`); only the rwx bits for user, group and other.
pub fn parse_mode(value: &str) -> Result<u16, String> {
    let digits = value.trim_start_matches("0o");
    let mode = u16::from_str_radix(digits, 8)
        .map_err(|_| format!("{value:?} is not an octal mode such as 0440"))?;
    if digits.is_empty() || mode > 0o777 {
        return Err(format!(
            "{value:?}: a mode is rwx bits for user, group and other, 0000 to 0777 (no setuid, setgid or sticky)"
        ));
    }
    Ok(mode)
}

/// Option names that look like credentials: refused with an explanation rather than as merely unknown.
fn looks_like_credential(option: &str) -> bool {
    let option = option.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "role_id",
        "key",
        "cert",
        "auth",
    ]
    .iter()
    .any(|word| option.contains(word))
}

impl VolumeOptions {
    /// The shortest and longest per-volume refresh interval accepted.
    pub const REFRESH_RANGE: (std::time::Duration, std::time::Duration) = (
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(24 * 3600),
    );

    /// Every option a volume accepts.
    pub const KNOWN: &'static [&'static str] = &[
        "refresh_interval",
        "namespace",
        "uid",
        "gid",
        "mode",
        "dir_mode",
    ];

    pub fn parse(options: &BTreeMap<String, String>) -> Result<Self, VolumeError> {
        let mut parsed = VolumeOptions::default();
        for (option, value) in options {
            let bad = |reason: String| VolumeError::BadOption {
                option: option.clone(),
                reason,
            };
            match option.as_str() {
                "uid" | "gid" => {
                    let id: u32 = value
                        .parse()
                        .map_err(|_| bad(format!("{value:?} is not a numeric id")))?;
                    if option == "uid" {
                        parsed.uid = Some(id);
                    } else {
                        parsed.gid = Some(id);
                    }
                }
                "mode" => parsed.mode = Some(parse_mode(value).map_err(bad)?),
                "dir_mode" => parsed.dir_mode = Some(parse_mode(value).map_err(bad)?),
                "refresh_interval" => {
                    let interval =
                        humantime::parse_duration(value).map_err(|e| VolumeError::BadOption {
                            option: option.clone(),
                            reason: format!("{e}; write a duration such as 30s or 5m"),
                        })?;
                    let (shortest, longest) = Self::REFRESH_RANGE;
                    if interval < shortest || interval > longest {
                        return Err(VolumeError::BadOption {
                            option: option.clone(),
                            reason: "must be between 1s and 24h".to_owned(),
                        });
                    }
                    parsed.refresh_interval = Some(interval);
                }
                "namespace" => {
                    crate::names::validate_namespace(value).map_err(|reason| {
                        VolumeError::BadOption {
                            option: option.clone(),
                            reason,
                        }
                    })?;
                    parsed.namespace = Some(value.trim_matches('/').to_owned());
                }
                _ if looks_like_credential(option) => {
                    return Err(VolumeError::CredentialOption {
                        option: option.clone(),
                    })
                }
                _ => {
                    return Err(VolumeError::UnknownOption {
                        option: option.clone(),
                    })
                }
            }
        }
        Ok(parsed)
    }

    /// The filesystem options of a volume: `base` (the config's) overridden by this volume's options.
    pub fn fs_options(&self, base: &crate::fs::FsOptions) -> crate::fs::FsOptions {
        crate::fs::FsOptions {
            uid: self.uid.unwrap_or(base.uid),
            gid: self.gid.unwrap_or(base.gid),
            file_mode: self.mode.unwrap_or(base.file_mode),
            dir_mode: self.dir_mode.unwrap_or(base.dir_mode),
            refresh_interval: self.refresh_interval.unwrap_or(base.refresh_interval),
            ..base.clone()
        }
    }
}
