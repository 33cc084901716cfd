//! Every shared-data key the filter uses, in one place. Keys carry the layout version of the
//! value they hold, so a future layout can live beside this one during a rolling reload; the
//! version in a key and the version byte in its value come from the same constant.

use crate::breaker::RECORD_VERSION as BREAKER_VERSION;
use crate::registry::RECORD_VERSION as REGISTRY_VERSION;
use crate::retry::budget::RECORD_VERSION as BUDGET_VERSION;

/// The namespace of every key.
pub const NAMESPACE: &str = "marty.resilience";

/// A bucket's breaker record.
pub fn breaker(bucket: &str) -> String {
    format!("{NAMESPACE}/v{BREAKER_VERSION}/cb/{bucket}")
}

/// A bucket's retry budget record.
pub fn budget(bucket: &str) -> String {
    format!("{NAMESPACE}/v{BUDGET_VERSION}/budget/{bucket}")
}

/// The list of every bucket any worker has created (health reports all of them).
pub fn registry() -> String {
    format!("{NAMESPACE}/v{REGISTRY_VERSION}/routes")
}
