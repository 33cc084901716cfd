//! Every shared-data key the filter uses, in one place. Keys are under the plugin instance's
//! `stat_prefix`, so two instances never share a breaker, a budget or a registry, and carry the
//! layout version of the value they hold, so a future layout can live beside this one during a
//! rolling reload; the version in a key and the version byte in its value come from the same
//! constant.

use crate::breaker::RECORD_VERSION as BREAKER_VERSION;
use crate::lease::RECORD_VERSION as LEASE_VERSION;
use crate::registry::RECORD_VERSION as REGISTRY_VERSION;
use crate::retry::budget::RECORD_VERSION as BUDGET_VERSION;

/// A bucket's breaker record.
pub fn breaker(prefix: &str, bucket: &str) -> String {
    format!("{prefix}/v{BREAKER_VERSION}/cb/{bucket}")
}

/// A bucket's retry budget record.
pub fn budget(prefix: &str, bucket: &str) -> String {
    format!("{prefix}/v{BUDGET_VERSION}/budget/{bucket}")
}

/// The list of every bucket any worker of the instance has created (health reports them all).
pub fn registry(prefix: &str) -> String {
    format!("{prefix}/v{REGISTRY_VERSION}/routes")
}

/// The leases of every VM holding slots of the instance's gauges ([`crate::lease`]).
pub fn leases(prefix: &str) -> String {
    format!("{prefix}/v{LEASE_VERSION}/leases")
}
