//! The bodies of the fuzz targets (`filter/core/fuzz/`), shared with the native test that
//! replays their corpus and regression inputs (`tests/fuzz_regressions_test.rs`), so a crash
//! found by the fuzzer stays a test without a fuzzer.
//!
//! Each body takes arbitrary bytes, feeds them to one parser or decoder of untrusted input,
//! and checks invariants beyond "no panic". A broken invariant is returned as `Err` (this
//! crate never panics); the fuzz target and the test turn it into a failure.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::breaker::{self, Decision, Now, Outcome, Record, State, Transition};
use crate::config::{Environment, RoutePolicy, Settings};
use crate::fault::header::{self, Spec, MAX_VALUE_LEN};
use crate::lease::{self, Holdings, Leases, MAX_LEASES};
use crate::pbstruct;
use crate::registry::{self, MAX_REGISTERED};
use crate::retry::budget;
use crate::routes;
use crate::store::{Codec, MemoryStore};

/// What a fuzz body reports: `Err` names the broken invariant and what showed it.
pub type Checked = Result<(), String>;

/// A fuzz body: arbitrary bytes in, a broken invariant out.
pub type Target = fn(&[u8]) -> Checked;

/// Every target, by the name of its fuzz binary and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("config_env", config_env),
    ("fault_header", fault_header),
    ("route_metadata", route_metadata),
    ("breaker_record", breaker_record),
    ("budget_record", budget_record),
    ("route_registry", route_registry),
    ("lease_record", lease_record),
];

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Checked {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

// ------------------------------------------------------------------ configuration

/// Splits a fuzz input into the plugin configuration and the VM environment: the bytes before
/// the first NUL are the configuration; after it, each line is `NAME=VALUE` (bytes read as
/// lossy UTF-8, as a host would hand them over once decoded).
pub fn split_config_input(data: &[u8]) -> (&[u8], Vec<(String, String)>) {
    let Some(nul) = data.iter().position(|b| *b == 0) else {
        return (data, Vec::new());
    };
    let (config, rest) = data.split_at(nul);
    let env = rest
        .get(1..)
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let text = String::from_utf8_lossy(line);
            match text.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => (text.to_string(), String::new()),
            }
        })
        .collect();
    (config, env)
}

/// `Settings::parse(config, env)`. An accepted configuration's every resolved policy, written
/// back with `RoutePolicy::to_json`, parses (alone, with no variables) to the same policy.
pub fn config_env(data: &[u8]) -> Checked {
    let (config, env) = split_config_input(data);
    let Ok(settings) = Settings::parse(config, &env) else {
        return Ok(());
    };
    round_trip(&settings.defaults, "defaults")?;
    for (name, policy) in &settings.routes {
        round_trip(policy, &format!("routes.{name}"))?;
    }
    Ok(())
}

/// The configuration that `to_json` describes, as a plugin JSON: every field is written, so
/// the preset under it does not matter. The token is redacted in `to_json` (it goes into
/// reports); the real one is put back. `enabled_by_env` records which layer switched faults
/// on, which a single JSON layer cannot say: it is compared as "enabled".
fn round_trip(policy: &RoutePolicy, what: &str) -> Checked {
    let mut written = policy.to_json();
    if let Some(trigger) = written
        .get_mut("failure_injection")
        .and_then(|f| f.get_mut("header_trigger"))
        .and_then(Value::as_object_mut)
    {
        trigger.insert(
            "token".to_string(),
            json!(policy.failure_injection.header_trigger.token),
        );
    }
    let text = written.to_string();
    let reparsed = Settings::parse(text.as_bytes(), &[])
        .map_err(|e| format!("{what}: to_json wrote {text}, which is rejected: {e}"))?
        .defaults;
    let mut expected = policy.clone();
    expected.failure_injection.enabled_by_env = false;
    ensure(reparsed == expected, || {
        format!("{what}: to_json wrote {text}, which parses to {reparsed:?}, not {expected:?}")
    })
}

// ------------------------------------------------------------------ fault header

/// `x-failure-inject` values: any bytes give a spec or a reason, and an accepted spec is
/// within the grammar's bounds.
pub fn fault_header(data: &[u8]) -> Checked {
    let parsed = header::parse(data);
    if data.len() > MAX_VALUE_LEN {
        return ensure(parsed == Err(header::Invalid::TooLong), || {
            format!("a {}-byte value gave {parsed:?}", data.len())
        });
    }
    let Ok(Spec::Custom(spec)) = parsed else {
        return Ok(());
    };
    ensure(
        spec.abort_http.is_some() || spec.abort_grpc.is_some() || spec.delay.is_some(),
        || format!("{spec:?} names no fault"),
    )?;
    ensure(
        spec.abort_http.is_none_or(|s| (200..=599).contains(&s)),
        || format!("abort status out of range in {spec:?}"),
    )?;
    ensure(spec.abort_grpc.is_none_or(|s| s <= 16), || {
        format!("gRPC status out of range in {spec:?}")
    })?;
    ensure(
        spec.delay
            .is_none_or(|d| d > 0 && d <= crate::duration::MAX_DURATION_NANOS),
        || format!("delay out of range in {spec:?}"),
    )?;
    ensure(spec.rate.is_none_or(|r| (0.0..=1.0).contains(&r)), || {
        format!("rate out of range in {spec:?}")
    })
}

// ------------------------------------------------------------------ route metadata

/// The route names metadata is resolved for: one the plugin JSON configures, one it does not.
const METADATA_ROUTES: &[&str] = &["users", "unlisted"];

/// The plugin JSON the metadata is laid over (a configured route, faults with a token).
const METADATA_BASE: &str = r#"{
  "environment": "production",
  "circuit_breaker": {"failure_threshold": 3},
  "failure_injection": {"enabled": true, "header_trigger": {"enabled": true, "token": "t"}},
  "routes": {"users": {"retry": {"max_attempts": 2}}}
}"#;

/// `filter_metadata` and `decode_struct` over a serialized `Metadata` (or `Struct`) message,
/// then `routes::resolve` (which calls `Settings::with_metadata`) with the decoded entry.
/// A decoded value re-encodes to a message that decodes to the same value; resolving never
/// loses the plugin JSON (invalid metadata falls back to it).
pub fn route_metadata(data: &[u8]) -> Checked {
    // Parsed once: parsing it on every input would take most of the fuzzer's time.
    static BASE: OnceLock<Result<Settings, String>> = OnceLock::new();
    let settings = BASE
        .get_or_init(|| {
            Settings::parse(METADATA_BASE.as_bytes(), &[])
                .map_err(|e| format!("the base configuration is rejected: {e}"))
        })
        .as_ref()?;
    let mut values = Vec::new();
    if let Ok(Some(value)) = pbstruct::filter_metadata(data, "marty.resilience") {
        values.push(value);
    }
    if let Ok(value) = pbstruct::decode_struct(data) {
        values.push(value);
    }
    for value in &values {
        let Value::Object(map) = value else {
            return Err(format!("a Struct decoded to a non-object {value}"));
        };
        let again = pbstruct::decode_struct(&encode_struct(map));
        ensure(again.as_ref() == Ok(value), || {
            format!("{value} re-encoded decodes to {again:?}")
        })?;
        for route in METADATA_ROUTES {
            let resolved = routes::resolve(settings, route, Some(value));
            let direct = settings.with_metadata(route, value);
            match (&direct, &resolved.metadata_error) {
                (Ok(policy), None) => ensure(*policy == resolved.route.policy, || {
                    format!("resolve and with_metadata disagree on {route} with {value}")
                })?,
                (Err(_), Some(_)) => {
                    let fallback = settings.routes.get(route).unwrap_or(&settings.defaults);
                    ensure(resolved.route.policy == *fallback, || {
                        format!("invalid metadata {value} on {route} did not fall back")
                    })?
                }
                _ => {
                    return Err(format!(
                        "resolve and with_metadata disagree on validity for {route} with {value}"
                    ))
                }
            }
        }
    }
    Ok(())
}

/// A `google.protobuf.Struct` as protobuf bytes (the inverse of `pbstruct::decode_struct`).
pub fn encode_struct(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in map {
        let mut entry = Vec::new();
        bytes_field(1, key.as_bytes(), &mut entry);
        bytes_field(2, &encode_value(value), &mut entry);
        bytes_field(1, &entry, &mut out);
    }
    out
}

fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Value::Null => {
            varint(1 << 3, &mut out);
            varint(0, &mut out);
        }
        Value::Number(n) => {
            varint(2 << 3 | 1, &mut out);
            out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_le_bytes());
        }
        Value::String(s) => bytes_field(3, s.as_bytes(), &mut out),
        Value::Bool(b) => {
            varint(4 << 3, &mut out);
            varint(u64::from(*b), &mut out);
        }
        Value::Object(map) => bytes_field(5, &encode_struct(map), &mut out),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                bytes_field(1, &encode_value(item), &mut list);
            }
            bytes_field(6, &list, &mut out);
        }
    }
    out
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

// ------------------------------------------------------------------ shared-data records

/// Reads a `u64` off the front of `data` (zero-padded), for a clock reading.
fn take_u64(data: &[u8]) -> (u64, &[u8]) {
    let mut word = [0u8; 8];
    let (head, rest) = data.split_at(data.len().min(8));
    for (slot, byte) in word.iter_mut().zip(head) {
        *slot = *byte;
    }
    (u64::from_le_bytes(word), rest)
}

/// The breaker record codec, then the breaker's steps over whatever record decoded (another
/// worker, or an older module, may have written anything): the first 8 bytes are the clock
/// (its value modulo 3 also picks the preset whose policy applies), the rest the stored value. A value that decodes encodes back to the same bytes; every
/// record a step writes round-trips; every transition is one the state machine has, and the
/// written record is in the state the transition names.
pub fn breaker_record(data: &[u8]) -> Checked {
    let (mono_ns, bytes) = take_u64(data);
    let Some(rec) = Record::decode(bytes) else {
        return Ok(());
    };
    ensure(rec.encode() == bytes, || {
        format!("{rec:?} decoded from {bytes:?} encodes differently")
    })?;
    // The clock's low bits pick the preset, so each preset's thresholds and slots are tried.
    let environment = match mono_ns % 3 {
        0 => Environment::Production,
        1 => Environment::Development,
        _ => Environment::Testing,
    };
    let policy = environment.preset().circuit_breaker;
    let now = Now {
        mono_ns,
        unix_ms: 1,
    };
    let admitted = breaker::admit(&rec, &policy, now);
    check_step(&rec, &admitted.write, admitted.transition, "admit")?;
    if let Decision::Allow(ticket) = admitted.result {
        let base = admitted.write.clone().unwrap_or_else(|| rec.clone());
        for outcome in [Outcome::Success, Outcome::Failure, Outcome::Ignored] {
            let step = breaker::record(&base, &policy, now, ticket, outcome);
            check_step(&base, &step.write, step.transition, "record")?;
        }
    }
    let ticked = breaker::tick(&rec, &policy, now);
    check_step(&rec, &ticked.write, ticked.transition, "tick")
}

fn check_step(
    before: &Record,
    write: &Option<Record>,
    transition: Option<Transition>,
    what: &str,
) -> Checked {
    if let Some(next) = write {
        let again = Record::decode(&next.encode());
        ensure(again.as_ref() == Some(next), || {
            format!("{what} wrote {next:?}, which does not round-trip")
        })?;
    }
    let Some(transition) = transition else {
        return Ok(());
    };
    let legal = matches!(
        (before.state, transition.to()),
        (State::Closed, State::Open)
            | (State::Open, State::HalfOpen)
            | (State::HalfOpen, State::Closed)
            | (State::HalfOpen, State::Open)
    );
    ensure(legal, || {
        format!("{what} made {:?} -> {transition:?}", before.state)
    })?;
    ensure(
        write.as_ref().map(|r| r.state) == Some(transition.to()),
        || format!("{what} reported {transition:?} but wrote {write:?}"),
    )
}

/// The retry budget record codec, then the budget arithmetic over whatever decoded: the first
/// 8 bytes are the clock, the rest the stored value. A value that decodes encodes back to the
/// same bytes; `add` writes a record that round-trips and counts what it added.
pub fn budget_record(data: &[u8]) -> Checked {
    let (now_ns, bytes) = take_u64(data);
    let Some(rec) = budget::Record::decode(bytes) else {
        return Ok(());
    };
    ensure(rec.encode() == bytes, || {
        format!("{rec:?} decoded from {bytes:?} encodes differently")
    })?;
    let policy = budget::Policy::default();
    let before = budget::totals(&rec, now_ns, policy.window_ns);
    let ratio = budget::failure_ratio(&rec, now_ns, policy.window_ns);
    ensure((0.0..=1.0).contains(&ratio), || {
        format!("failure ratio {ratio} of {rec:?}")
    })?;
    budget::allows_retry(&rec, now_ns, &policy);
    let next = budget::add(&rec, now_ns, policy.window_ns, 1, 1, 1);
    let again = budget::Record::decode(&next.encode());
    ensure(again.as_ref() == Some(&next), || {
        format!("add wrote {next:?}, which does not round-trip")
    })?;
    let after = budget::totals(&next, now_ns, policy.window_ns);
    ensure(
        after.0 > before.0 || after.0 == before.0 && after.0 >= u64::from(u32::MAX),
        || format!("adding a request to {rec:?} at {now_ns} counted {before:?} -> {after:?}"),
    )
}

/// The shared bucket registry: any stored bytes read as entries whose names are non-empty,
/// single-line and tab-free, at most [`MAX_REGISTERED`]; registering a name (the first part of
/// the input) then lists it, unless the list is full; expiring keeps the kept names.
pub fn route_registry(data: &[u8]) -> Checked {
    const PREFIX: &str = "fuzz";
    let (name, stored) = match data.iter().position(|b| *b == 0) {
        Some(nul) => {
            let (name, rest) = data.split_at(nul);
            (
                String::from_utf8_lossy(name),
                rest.get(1..).unwrap_or_default(),
            )
        }
        None => (Default::default(), data),
    };
    let store = MemoryStore::new();
    store.put_raw(&crate::keys::registry(PREFIX), stored);
    let names: Vec<String> = registry::registered(&store, PREFIX)
        .into_iter()
        .map(|e| e.name)
        .collect();
    ensure(names.len() <= MAX_REGISTERED, || {
        format!("{} names listed", names.len())
    })?;
    ensure(names.iter().all(|n| !n.contains('\n')), || {
        format!("a listed name has a newline: {names:?}")
    })?;
    let listed = registry::register(&store, PREFIX, &name, MAX_REGISTERED, 7)
        .map_err(|e| format!("registering {name:?} failed in memory: {e:?}"))?;
    let after: Vec<String> = registry::registered(&store, PREFIX)
        .into_iter()
        .map(|e| e.name)
        .collect();
    let refusable = name.is_empty() || name.contains(['\n', '\r', '\t']);
    let full = names.len() >= MAX_REGISTERED;
    if !refusable {
        ensure(
            listed == after.iter().any(|n| *n == name) && (full || listed),
            || format!("{name:?} (listed: {listed}) after registering: {after:?}"),
        )?;
    }
    ensure(after.len() <= MAX_REGISTERED, || {
        format!("{} names listed after registering", after.len())
    })?;
    let kept = vec![name.to_string()];
    registry::expire(&store, PREFIX, &kept, 1, u64::MAX)
        .map_err(|e| format!("expiring failed in memory: {e:?}"))?;
    let left: Vec<String> = registry::registered(&store, PREFIX)
        .into_iter()
        .map(|e| e.name)
        .collect();
    ensure(left.iter().all(|n| *n == name), || {
        format!("expiry kept {left:?}, only {name:?} was to stay")
    })
}

// ------------------------------------------------------------------ leases

/// A stored leases record (after an 8-byte clock): what decodes re-encodes to the same bytes,
/// and a renewal over any stored bytes (a VM with no lease publishing one slot, then one with
/// a lease taken from the record) keeps the record within [`MAX_LEASES`], claims only live
/// leases that were stale, and leaves a record that decodes.
pub fn lease_record(data: &[u8]) -> Checked {
    const KEY: &str = "fuzz/v1/leases";
    let (now_ns, bytes) = take_u64(data);
    let stored = Leases::decode(bytes);
    if let Some(leases) = &stored {
        ensure(leases.encode() == bytes, || {
            format!("{leases:?} decoded from {bytes:?} encodes differently")
        })?;
    }
    let store = MemoryStore::new();
    store.put_raw(KEY, bytes);
    let holdings = Holdings {
        unflushed: 1,
        buckets: Vec::new(),
    };
    let own = stored.as_ref().and_then(|l| l.leases.first()).map(|l| l.id);
    for own in [None, own] {
        let renewal = lease::renew(&store, KEY, own, &holdings, true, now_ns)
            .map_err(|e| format!("renewal failed in memory: {e:?}"))?;
        let (after, _, corrupt) = crate::store::load_value::<_, Leases>(&store, KEY)
            .map_err(|e| format!("reading back failed: {e:?}"))?;
        ensure(!corrupt, || {
            "the renewal left a record that does not decode".into()
        })?;
        ensure(after.leases.len() <= MAX_LEASES, || {
            format!("{} leases after renewal", after.leases.len())
        })?;
        let live_before = stored
            .as_ref()
            .map_or(0, |l| l.leases.iter().filter(|l| !l.claimed).count());
        ensure(renewal.reclaimed.len() <= live_before, || {
            format!(
                "{} reclaimed of {live_before} live",
                renewal.reclaimed.len()
            )
        })?;
        if let Some(id) = renewal.id {
            ensure(
                after
                    .leases
                    .iter()
                    .any(|l| l.id == id && !l.claimed && l.holdings == holdings),
                || format!("lease {id} not in {after:?}"),
            )?;
        }
    }
    Ok(())
}
