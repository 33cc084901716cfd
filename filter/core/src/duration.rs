//! Durations in configuration: seconds as a JSON number (as in the Marty YAML), or a string
//! with a unit (`"250ms"`, `"30s"`, `"1.5m"`, `"1h"`). Held as nanoseconds.

/// Upper bound of any configured duration: a day. Longer values are almost surely a unit
/// mistake (milliseconds written as seconds) and would overflow nothing, but help nobody.
pub const MAX_DURATION_NANOS: u64 = 86_400 * crate::NANOS_PER_SEC;

/// Parses a duration given in seconds (a finite, non-negative number).
pub fn from_seconds(secs: f64) -> Option<u64> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let nanos = secs * crate::NANOS_PER_SEC as f64;
    if nanos > MAX_DURATION_NANOS as f64 {
        return None;
    }
    Some(nanos.round() as u64)
}

/// Parses `"<number><unit>"` with unit `ms`, `s`, `m` or `h`; a bare number means seconds.
pub fn parse(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    from_seconds(value * scale)
}

/// Formats nanoseconds as seconds for messages and reports (`0.25s`, `30s`).
pub fn display(nanos: u64) -> String {
    let secs = nanos as f64 / crate::NANOS_PER_SEC as f64;
    format!("{secs}s")
}
