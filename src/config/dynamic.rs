//! `[dynamic]`: how the leases of dynamic volumes (`[[rules]]` with `dynamic = true`) are held, replaced and
//! revoked.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::lease::LeasePolicy;

/// The longest `unmount_grace` and `reissue_grace` accepted: beyond a day a lease outlives its holder for no use a
/// restart or a reconnect could need, and a typo (`30d` for `30s`) would keep credentials valid for weeks.
const MOST_GRACE: Duration = Duration::from_secs(24 * 3600);

/// `[dynamic]`: the lease policy of every dynamic volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicConfig {
    /// How long after the last Unmount of a holder its lease is revoked (`0s`: at once). A container restarted
    /// within it gets a new credential all the same; the grace only delays the revocation. At most `24h`.
    #[serde(with = "humantime_serde")]
    pub unmount_grace: Duration,
    /// How long a replaced lease stays valid after its successor is served, so the application can reconnect with
    /// the new credential before the old one stops working. At most `24h`.
    #[serde(with = "humantime_serde")]
    pub reissue_grace: Duration,
    /// Issue a successor this long before a lease (or a certificate) ends for good. Unset: at 2/3 of its life.
    #[serde(default, with = "humantime_serde")]
    pub reissue_before: Option<Duration>,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        let policy = LeasePolicy::default();
        DynamicConfig {
            unmount_grace: policy.unmount_grace,
            reissue_grace: policy.reissue_grace,
            reissue_before: policy.reissue_before,
        }
    }
}

impl DynamicConfig {
    /// The policy the lease keepers follow.
    pub fn lease_policy(&self) -> LeasePolicy {
        LeasePolicy {
            unmount_grace: self.unmount_grace,
            reissue_grace: self.reissue_grace,
            reissue_before: self.reissue_before,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, grace) in [
            ("unmount_grace", self.unmount_grace),
            ("reissue_grace", self.reissue_grace),
        ] {
            if grace > MOST_GRACE {
                return Err(ConfigError::Invalid(format!(
                    "key `dynamic.{key}`: at most 24h, not {}",
                    humantime::format_duration(grace)
                )));
            }
        }
        // A successor issued only when the lease ends leaves the holder without a valid credential meanwhile.
        if self.reissue_before.is_some_and(|before| before.is_zero()) {
            return Err(ConfigError::Invalid(
                "key `dynamic.reissue_before`: must be longer than zero; leave it unset to re-issue at 2/3 of a lease's life"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}
