//! The options a volume is created with (`docker volume create -o KEY=VALUE`): parsed, checked, and refused when
//! they look like credentials.

use std::collections::BTreeMap;

use super::VolumeError;

/// Options a volume may be created with (`docker volume create -o KEY=VALUE`). Docker stores them and shows them in
/// `docker volume inspect`, so no option ever carries a credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeOptions {
    /// The Vault path the volume reads (`-o path=secret/app-1`), for names that cannot be one: Podman allows no
    /// `/` in a volume name, Compose needs a plain name. Not a credential, and the access rules decide it as they
    /// decide a name. `None`: the volume name is the path.
    pub path: Option<crate::names::VaultPath>,
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
    /// Dynamic volumes: one credential per container (the default) or one for the whole volume (`per-volume`).
    pub lease: crate::lease::LeaseSharing,
    /// Dynamic volumes from `pki/issue/<role>`: the certificate's `common_name`, `alt_names`, `ip_sans` and `ttl`,
    /// checked here and sent as the issue request's parameters. Not credentials.
    pub pki: BTreeMap<String, String>,
}

/// A DNS name as a certificate names it: letters, digits, `-`, `.`, and a leading `*.` wildcard.
fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let fine = !bare.is_empty()
        && name.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if fine {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS name such as web.internal"))
    }
}

/// A comma-separated list, each item checked by `check`.
fn check_list(value: &str, check: impl Fn(&str) -> Result<(), String>) -> Result<(), String> {
    value.split(',').map(str::trim).try_for_each(check)
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
        "path",
        "refresh_interval",
        "namespace",
        "uid",
        "gid",
        "mode",
        "dir_mode",
        "lease",
        "common_name",
        "alt_names",
        "ip_sans",
        "ttl",
    ];

    /// Whether any option only a dynamic volume takes is set.
    pub fn has_dynamic_options(&self) -> bool {
        self.lease != crate::lease::LeaseSharing::default() || !self.pki.is_empty()
    }

    pub fn parse(options: &BTreeMap<String, String>) -> Result<Self, VolumeError> {
        let mut parsed = VolumeOptions::default();
        for (option, value) in options {
            let bad = |reason: String| VolumeError::BadOption {
                option: option.clone(),
                reason,
            };
            match option.as_str() {
                "path" => {
                    let path =
                        crate::names::VaultPath::from_volume_name(value).map_err(|reason| {
                            bad(format!("{value:?} is not a Vault path: {reason}"))
                        })?;
                    parsed.path = Some(path);
                }
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
                "lease" => {
                    parsed.lease = match value.as_str() {
                        "per-container" => crate::lease::LeaseSharing::PerContainer,
                        "per-volume" => crate::lease::LeaseSharing::PerVolume,
                        _ => {
                            return Err(bad(
                                "is per-container (the default) or per-volume".to_owned()
                            ))
                        }
                    }
                }
                "common_name" => {
                    check_dns_name(value).map_err(bad)?;
                    parsed.pki.insert(option.clone(), value.clone());
                }
                "alt_names" => {
                    check_list(value, check_dns_name).map_err(bad)?;
                    parsed.pki.insert(option.clone(), value.clone());
                }
                "ip_sans" => {
                    check_list(value, |ip| {
                        ip.parse::<std::net::IpAddr>()
                            .map(|_| ())
                            .map_err(|_| format!("{ip:?} is not an IP address"))
                    })
                    .map_err(bad)?;
                    parsed.pki.insert(option.clone(), value.clone());
                }
                "ttl" => {
                    let ttl = humantime::parse_duration(value)
                        .map_err(|e| bad(format!("{e}; write a duration such as 72h")))?;
                    if ttl < std::time::Duration::from_secs(1) {
                        return Err(bad("must be at least 1s".to_owned()));
                    }
                    parsed
                        .pki
                        .insert(option.clone(), format!("{}s", ttl.as_secs()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<VolumeOptions, VolumeError> {
        VolumeOptions::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn pki_parameters_and_lease_sharing_are_checked() {
        let parsed = parse(&[
            ("common_name", "web.internal"),
            ("alt_names", "a.web.internal, *.web.internal"),
            ("ip_sans", "127.0.0.1,::1"),
            ("ttl", "72h"),
            ("lease", "per-volume"),
        ])
        .unwrap();
        assert_eq!(parsed.lease, crate::lease::LeaseSharing::PerVolume);
        assert_eq!(parsed.pki.get("ttl").map(String::as_str), Some("259200s"));
        assert!(parsed.has_dynamic_options());
        assert!(!parse(&[]).unwrap().has_dynamic_options());
        for bad in [
            ("common_name", "web internal"),
            ("common_name", "a..b"),
            ("common_name", "x\ny"),
            ("alt_names", "ok.internal,bad name"),
            ("ip_sans", "300.1.1.1"),
            ("ttl", "soon"),
            ("ttl", "0s"),
            ("lease", "per-host"),
        ] {
            assert!(
                matches!(parse(&[bad]), Err(VolumeError::BadOption { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
