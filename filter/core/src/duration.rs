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
    let value = decimal(number)?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    from_seconds(value * scale)
}

/// Formats nanoseconds as seconds for messages and reports (`0.25s`, `30s`, `0.000000001s`).
///
/// Integer arithmetic, not `f64`'s `Display`: that one costs the module ~15 KB of float
/// formatting. The text is the same: up to 15 significant digits (every duration up to the
/// one-day cap) the exact decimal is also the shortest one that reads back as the `f64`.
pub fn display(nanos: u64) -> String {
    let (whole, fraction) = (nanos / crate::NANOS_PER_SEC, nanos % crate::NANOS_PER_SEC);
    if fraction == 0 {
        format!("{whole}s")
    } else {
        let digits = format!("{fraction:09}");
        format!("{whole}.{}s", digits.trim_end_matches('0'))
    }
}

/// Reads `digits` or `digits.digits` (no sign, exponent or blank) as the nearest `f64`.
///
/// Not `str::parse`: core's float parser costs the module ~15 KB (code and tables). Up to 15
/// significant digits and 22 fraction digits (any duration or rate anyone writes) this is the
/// exact, correctly rounded parse (an integer below 2^53 scaled by one exact power of ten is one
/// rounding); digits past the 19th are dropped, and longer forms may be one unit in the last
/// place off, far below a nanosecond or a rate anyone could tell apart.
pub fn decimal(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    // mantissa * 10^exponent, the mantissa holding the first 19 significant digits.
    let mut mantissa: u64 = 0;
    let mut significant = 0u32;
    let mut exponent: i32 = 0;
    for (b, in_fraction) in whole
        .bytes()
        .map(|b| (b, false))
        .chain(fraction.bytes().map(|b| (b, true)))
    {
        let digit = u64::from(b - b'0');
        if significant < 19 {
            mantissa = mantissa * 10 + digit;
            if mantissa != 0 {
                significant += 1;
            }
            if in_fraction {
                exponent -= 1;
            }
        } else if !in_fraction {
            exponent += 1;
        }
    }
    let scale = (0..exponent.unsigned_abs()).fold(1.0f64, |p, _| p * 10.0);
    Some(if exponent < 0 {
        mantissa as f64 / scale
    } else {
        mantissa as f64 * scale
    })
}

#[cfg(test)]
mod tests {
    // The integer forms above stand in for `f64`'s parse and `Display`: they must agree.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn display_writes_what_f64_display_wrote() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xD15_0001);
        let fixed = [
            0,
            1,
            10,
            250_000_000,
            1_000_000_000,
            30_000_000_000,
            MAX_DURATION_NANOS,
        ];
        let random = (0..20_000).map(|_| rng.gen_range(0..=MAX_DURATION_NANOS));
        for nanos in fixed.into_iter().chain(random) {
            let secs = nanos as f64 / crate::NANOS_PER_SEC as f64;
            assert_eq!(display(nanos), format!("{secs}s"), "{nanos}");
        }
    }

    #[test]
    fn decimal_reads_what_str_parse_read() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xDEC_0001);
        let fixed = [
            "0",
            "1",
            "0.5",
            "1.0",
            "0.1",
            "00.25",
            "86400",
            "1.999999999999999",
            "0.3",
        ];
        let random = (0..20_000).map(|_| {
            // At most 15 significant digits: 6 whole and 9 fraction digits (a nanosecond).
            let whole_digits = rng.gen_range(1..=6);
            let whole: u64 = rng.gen_range(0..10u64.pow(whole_digits));
            let digits = rng.gen_range(0..=9);
            if digits == 0 {
                whole.to_string()
            } else {
                let fraction: u64 = rng.gen_range(0..10u64.pow(digits));
                format!("{whole}.{fraction:0width$}", width = digits as usize)
            }
        });
        for text in fixed.map(str::to_string).into_iter().chain(random) {
            assert_eq!(decimal(&text), Some(text.parse::<f64>().unwrap()), "{text}");
        }
    }

    #[test]
    fn decimal_of_more_digits_is_within_one_unit_in_the_last_place() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xDEC_0002);
        for _ in 0..20_000 {
            let whole: u64 = rng.gen_range(0..1_000_000_000);
            let fraction: u64 = rng.gen_range(0..1_000_000_000_000);
            let text = format!("{whole}.{fraction:012}");
            let exact = text.parse::<f64>().unwrap();
            let ours = decimal(&text).unwrap();
            assert!(
                ours.to_bits().abs_diff(exact.to_bits()) <= 1,
                "{text}: {ours} vs {exact}"
            );
        }
    }

    #[test]
    fn decimal_refuses_what_is_not_digits_with_one_dot() {
        for bad in [
            "", ".", ".5", "5.", "1.2.3", "-1", "+1", "1e3", " 1", "1 ", "0x1", "∞",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }
}
