//! One declaration per configuration field. A section (`circuit_breaker`, `retry`,
//! `failure_injection`, `health`, and the objects nested in them) is a `section!` table with one row
//! per field; the table generates the layer's partial form (the "patch"), the field list of
//! "unknown field" errors, the JSON reader, the environment-variable names and reader, the
//! overlay onto the resolved policy, and the resolved policy as JSON.
//!
//! A row is `name: kind(Type, place, parse, show)`:
//! - `name` is the JSON key (upper-cased, the last part of its `MARTY_RESILIENCE_*` variable);
//! - `kind` is how a variable spells the value: `value` (JSON when it parses as JSON, else a
//!   string), `list` (a JSON array, or items separated by commas) or `text` (always a string:
//!   names and tokens that may look like numbers);
//! - `place` is where the value lives in the resolved policy (`backoff.base_delay`);
//! - `parse` reads it: `(&Value, &str) -> Result<Type, ConfigError>`, the `&str` being the path
//!   or variable name an error names;
//! - `show` writes the resolved value back as configuration would: `(&Type) -> Value`.
//!
//! A nested object is `name: object(PatchType)`, `PatchType` being another `section!` over the
//! same policy, read field by field (a layer may set `abort.http_status` alone). Before the
//! rows, `@before_apply f;` runs `f(patch, policy)` before the fields are laid over, and
//! `@variables objects_last;` lists the variables of nested objects after the section's own
//! instead of in place (the order "unknown variable" errors give).
//!
//! Adding a field is then: its row, the policy field its `place` names, its value in each preset
//! (`presets.rs`; the compiler asks), and its docs: `config/marty-resilience.schema.json` and
//! `docs/configuration.md` (`config_files_test` asks), and a value in
//! `config_sections_test::everything_changed` (that test asks), which carries it through JSON,
//! `to_json` and its variable.

use serde_json::Value;

use super::json::{duration_nanos, integer_u32, join, object};
use super::ConfigError;

/// What every declared section provides.
pub trait Section: Default {
    /// The resolved policy the section configures.
    type Policy;

    /// JSON field names, in documentation order.
    const FIELDS: &'static [&'static str];

    /// Reads one field; `path` is what an error names (a JSON path or a variable name).
    fn set(&mut self, key: &str, value: &Value, path: &str) -> Result<(), ConfigError>;

    /// Lays this patch over `policy`: fields it sets win, the rest stay.
    fn apply(&self, policy: &mut Self::Policy);

    /// The resolved section, as configuration would write it (reports, round trips, docs tests).
    fn to_json(policy: &Self::Policy) -> Value;

    /// Appends the section's variable fields, lower case and flattened (`budget_window`), each
    /// after `prefix`.
    fn env_fields(out: &mut Vec<String>, prefix: &str);

    /// Reads the variable `name`, whose field (lower case, flattened) is `field`; `None` when
    /// the section has no such field.
    fn set_env(&mut self, field: &str, raw: &str, name: &str) -> Option<Result<(), ConfigError>>;

    /// Reads every field of the object `value` (a section, or an object nested in one).
    fn set_object(&mut self, value: &Value, path: &str) -> Result<(), ConfigError> {
        set_fields(value, path, &mut |field, v, p| self.set(field, v, p))
    }
}

/// [`Section::set_object`]'s loop, once for all sections rather than once per section.
#[inline(never)]
fn set_fields(
    value: &Value,
    path: &str,
    set: &mut dyn FnMut(&str, &Value, &str) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    for (field, v) in object(value, path)? {
        set(field, v, &join(path, field))?;
    }
    Ok(())
}

/// Declares a configuration section; see the module documentation for the row syntax.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $patch:ident for $policy:ty {
            $(@before_apply $hook:expr;)?
            $(@variables $order:ident;)?
            $( $name:ident : $kind:ident ($($args:tt)*) ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $patch {
            $( pub $name: section!(@patch_type $kind ($($args)*)), )*
        }

        impl $crate::config::section::Section for $patch {
            type Policy = $policy;

            const FIELDS: &'static [&'static str] = &[$(stringify!($name)),*];

            fn set(
                &mut self,
                key: &str,
                value: &serde_json::Value,
                path: &str,
            ) -> Result<(), $crate::config::ConfigError> {
                $(
                    if key == stringify!($name) {
                        return section!(@set self.$name, $kind ($($args)*), value, path);
                    }
                )*
                Err($crate::config::json::unknown_field(path, Self::FIELDS))
            }

            fn apply(&self, policy: &mut $policy) {
                $( ($hook)(self, &mut *policy); )?
                $( section!(@apply self.$name, policy, $kind ($($args)*)); )*
            }

            fn to_json(policy: &$policy) -> serde_json::Value {
                let mut map = serde_json::Map::new();
                $(
                    $crate::config::section::insert_field(
                        &mut map,
                        stringify!($name),
                        section!(@show policy, $kind ($($args)*)),
                    );
                )*
                serde_json::Value::Object(map)
            }

            fn env_fields(out: &mut Vec<String>, prefix: &str) {
                let objects_last = section!(@objects_last $($order)?);
                $( section!(@env_fields $name, $kind ($($args)*), out, prefix, true, !objects_last); )*
                if objects_last {
                    $( section!(@env_fields $name, $kind ($($args)*), out, prefix, false, true); )*
                }
            }

            fn set_env(
                &mut self,
                field: &str,
                raw: &str,
                name: &str,
            ) -> Option<Result<(), $crate::config::ConfigError>> {
                $( section!(@set_env_object self.$name, $name, $kind ($($args)*), field, raw, name); )*
                // A field of this section: its value as the variable spells it, read by `set`
                // under the variable's name. One lookup in a table rather than a branch per
                // field, each with its own copy of the reader (the module is loaded by every
                // sidecar). Objects are `None`: their fields were looked up above.
                const KINDS: &[(&str, Option<$crate::config::section::EnvKind>)] =
                    &[$( (stringify!($name), section!(@env_kind $kind)) ),*];
                let (_, kind) = KINDS.iter().find(|(known, _)| *known == field)?;
                let value = $crate::config::section::env_value((*kind)?, raw);
                Some(self.set(field, &value, name))
            }
        }
    };

    (@patch_type object ($nested:ty)) => { $nested };
    (@patch_type $kind:ident ($ty:ty, $($rest:tt)*)) => { Option<$ty> };

    (@set $slot:expr, object ($nested:ty), $value:expr, $path:expr) => {
        $crate::config::section::Section::set_object(&mut $slot, $value, $path)
    };
    (@set $slot:expr, $kind:ident ($ty:ty, $($place:ident).+, $parse:expr, $show:expr),
        $value:expr, $path:expr) => {{
        let parsed: Result<$ty, $crate::config::ConfigError> = ($parse)($value, $path);
        parsed.map(|v| $slot = Some(v))
    }};

    (@apply $slot:expr, $policy:ident, object ($nested:ty)) => {
        $crate::config::section::Section::apply(&$slot, $policy)
    };
    (@apply $slot:expr, $policy:ident,
        $kind:ident ($ty:ty, $($place:ident).+, $parse:expr, $show:expr)) => {
        if let Some(value) = &$slot {
            $policy.$($place).+ = value.clone();
        }
    };

    (@show $policy:ident, object ($nested:ty)) => {
        <$nested as $crate::config::section::Section>::to_json($policy)
    };
    (@show $policy:ident, $kind:ident ($ty:ty, $($place:ident).+, $parse:expr, $show:expr)) => {{
        let shown: serde_json::Value = ($show)(&$policy.$($place).+);
        shown
    }};

    (@objects_last objects_last) => { true };
    (@objects_last) => { false };

    (@env_fields $name:ident, object ($nested:ty), $out:ident, $prefix:ident,
        $fields:expr, $objects:expr) => {
        if $objects {
            let prefix = format!("{}{}_", $prefix, stringify!($name));
            <$nested as $crate::config::section::Section>::env_fields($out, &prefix);
        }
    };
    (@env_fields $name:ident, $kind:ident ($($args:tt)*), $out:ident, $prefix:ident,
        $fields:expr, $objects:expr) => {
        if $fields {
            $crate::config::section::push_env_field($out, $prefix, stringify!($name));
        }
    };

    (@set_env_object $slot:expr, $name:ident, object ($nested:ty), $field:ident, $raw:ident,
        $var:ident) => {
        if let Some(rest) = $field
            .strip_prefix(stringify!($name))
            .and_then(|rest| rest.strip_prefix('_'))
        {
            if let Some(result) =
                $crate::config::section::Section::set_env(&mut $slot, rest, $raw, $var)
            {
                return Some(result);
            }
        }
    };
    (@set_env_object $slot:expr, $name:ident, $kind:ident ($($args:tt)*), $field:ident,
        $raw:ident, $var:ident) => {};

    (@env_kind object) => { None };
    (@env_kind value) => { Some($crate::config::section::EnvKind::Value) };
    (@env_kind list) => { Some($crate::config::section::EnvKind::List) };
    (@env_kind text) => { Some($crate::config::section::EnvKind::Text) };
}

pub(crate) use section;

/// Appends `prefix` + `field` to the list of a section's variable fields. One call per row
/// instead of a `format!` expanded in each (the module is loaded by every sidecar).
#[inline(never)]
pub fn push_env_field(out: &mut Vec<String>, prefix: &str, field: &str) {
    out.push(format!("{prefix}{field}"));
}

/// Adds a field to a section's JSON; one call per row, like [`push_env_field`].
#[inline(never)]
pub fn insert_field(map: &mut serde_json::Map<String, Value>, field: &str, value: Value) {
    map.insert(field.to_string(), value);
}

/// How a `MARTY_RESILIENCE_*` variable spells a field's value.
#[derive(Clone, Copy, Debug)]
pub enum EnvKind {
    /// JSON when it parses as JSON (`5`, `true`, `[503]`), else a string.
    Value,
    /// A JSON array, or items separated by commas (`5xx,429`).
    List,
    /// Always a string: header names and tokens may look like numbers.
    Text,
}

/// A variable's value as `kind` reads it.
pub fn env_value(kind: EnvKind, raw: &str) -> Value {
    match kind {
        EnvKind::Value => json_or_string(raw),
        EnvKind::List => match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Array(_)) => v,
            _ => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(json_or_string)
                    .collect(),
            ),
        },
        EnvKind::Text => Value::from(raw),
    }
}

fn json_or_string(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw))
}

// ------------------------------------------------------------- readers and writers for rows

/// An integer in `[min, max]` (see [`integer_u32`]).
pub fn u32_in(min: u32, max: u32) -> impl Fn(&Value, &str) -> Result<u32, ConfigError> {
    move |value, path| integer_u32(value, path, min, max)
}

/// A duration greater than zero, in nanoseconds.
pub fn duration(value: &Value, path: &str) -> Result<u64, ConfigError> {
    duration_nanos(value, path, false)
}

/// A duration, zero allowed, in nanoseconds.
pub fn duration_or_zero(value: &Value, path: &str) -> Result<u64, ConfigError> {
    duration_nanos(value, path, true)
}

/// A value that is its own JSON (booleans, numbers, lists of them).
pub fn plain<T: Clone + Into<Value>>(value: &T) -> Value {
    value.clone().into()
}

/// Nanoseconds as the seconds configuration writes.
pub fn seconds(nanos: &u64) -> Value {
    Value::from(*nanos as f64 / crate::NANOS_PER_SEC as f64)
}

/// A backoff strategy by the name configuration gives it.
pub fn strategy_name(strategy: &crate::retry::backoff::Strategy) -> Value {
    Value::from(strategy.name())
}
