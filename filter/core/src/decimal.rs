//! `digits` or `digits.digits` read as the nearest `f64` (round to nearest, ties to even): what
//! `str::parse::<f64>` gives for that syntax, without core's float parser, which costs the module
//! ~15 KB of code and tables (every sidecar loads it). Rates, in headers and in configuration.
//!
//! Short forms (at most 19 significant digits forming an integer below 2^53, scaled by at most
//! 10^22) take Clinger's fast path: one exact integer, one exact power of ten, one correctly
//! rounded division or multiplication. Every other form is done exactly with big integers: the
//! quotient of the digits by the power of ten, to 57 bits plus a sticky bit, rounded once. Any
//! length is exact; the work grows with the digits, which only configuration and one request
//! header (already bounded by Envoy) can carry.

/// `digits` or `digits.digits`: no sign, exponent, blank or empty part. `None` for any other
/// text; otherwise the correctly rounded value (`inf` past `f64::MAX`, as `str::parse` gives).
pub fn parse(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !all_digits(whole)
        || !all_digits(fraction)
        || (fraction.is_empty() && text.len() != whole.len())
    {
        return None;
    }
    // value = digits * 10^exponent, the digits without leading or trailing zeros.
    let digits = [whole.as_bytes(), fraction.as_bytes()].concat();
    let mut exponent = -(fraction.len() as i64);
    let start = digits.iter().take_while(|d| **d == b'0').count();
    let digits = digits.get(start..).unwrap_or_default();
    let trailing = digits.iter().rev().take_while(|d| **d == b'0').count();
    let digits = digits.get(..digits.len() - trailing).unwrap_or_default();
    exponent += trailing as i64;
    if digits.is_empty() {
        return Some(0.0);
    }
    if digits.len() <= 19 && exponent.unsigned_abs() <= 22 {
        let mantissa = digits
            .iter()
            .fold(0u64, |m, d| m * 10 + u64::from(d - b'0'));
        if mantissa < 1 << 53 {
            // Both operands exact: the one operation rounds once, correctly.
            let scale = (0..exponent.unsigned_abs()).fold(1.0f64, |p, _| p * 10.0);
            return Some(if exponent < 0 {
                mantissa as f64 / scale
            } else {
                mantissa as f64 * scale
            });
        }
    }
    Some(exact(digits, exponent))
}

/// The correctly rounded `digits * 10^exponent` (digits ASCII, the first not `0`).
#[inline(never)]
fn exact(digits: &[u8], exponent: i64) -> f64 {
    // Numerator and denominator as integers: digits * 10^max(e, 0) over 10^max(-e, 0).
    let mut num = Big { words: Vec::new() };
    for d in digits {
        num.mul_add(10, u32::from(d - b'0'));
    }
    let mut den = Big::from(1);
    let ten_power = if exponent >= 0 { &mut num } else { &mut den };
    for _ in 0..exponent.unsigned_abs() {
        ten_power.mul_add(10, 0);
    }
    // Scale by 2^shift so that the quotient has 56 or 57 bits (56 + bits(den) - bits(num)
    // gives num * 2^shift between 2^55 and 2^57 times den).
    let shift = 56 + den.bits() as i64 - num.bits() as i64;
    if shift >= 0 {
        num.shl(shift as u64);
    } else {
        den.shl(shift.unsigned_abs());
    }
    // Restoring division, one quotient bit at a time.
    let mut quotient = 0u64;
    for bit in (0..57).rev() {
        let mut step = den.clone();
        step.shl(bit);
        if num.ge(&step) {
            num.sub(&step);
            quotient |= 1 << bit;
        }
    }
    round(quotient, !num.is_zero(), -shift)
}

/// The nearest `f64` to `(q + r) * 2^exp2`, where `r` is in [0, 1) and non-zero exactly when
/// `sticky`; `q` has at least 55 bits.
fn round(q: u64, sticky: bool, exp2: i64) -> f64 {
    let bits = 64 - i64::from(q.leading_zeros());
    let top = bits - 1 + exp2; // the binary exponent of q's leading bit
    if top > 1023 {
        return f64::INFINITY;
    }
    // Bits of q below the result's last place: 53 significant bits when normal, fewer below
    // 2^-1022 (subnormals end at 2^-1074).
    let drop = if top >= -1022 {
        bits - 53
    } else {
        bits - 53 + (-1022 - top)
    };
    if drop > bits {
        return 0.0; // below half of the smallest subnormal
    }
    let q = u128::from(q);
    let drop = drop as u32;
    let mut m = q >> drop;
    let rest = q & ((1u128 << drop) - 1);
    let half = (1u128 << drop) >> 1;
    if rest > half || (rest == half && drop > 0 && (sticky || m & 1 == 1)) {
        m += 1;
    }
    let mut place = exp2 + i64::from(drop); // value = m * 2^place
    if m == 1 << 53 {
        m >>= 1;
        place += 1;
    }
    if m < 1 << 52 {
        // Subnormal (place = -1074), or zero.
        return f64::from_bits(m as u64);
    }
    let biased = place + 52 + 1023;
    if biased >= 2047 {
        return f64::INFINITY;
    }
    f64::from_bits(((biased as u64) << 52) | (m as u64 & ((1 << 52) - 1)))
}

/// An unsigned integer, 32-bit words, least significant first, no high zero words.
#[derive(Clone)]
struct Big {
    words: Vec<u32>,
}

impl Big {
    fn from(v: u32) -> Self {
        Big { words: vec![v] }
    }

    fn mul_add(&mut self, mul: u32, add: u32) {
        let mut carry = u64::from(add);
        for w in &mut self.words {
            let t = u64::from(*w) * u64::from(mul) + carry;
            *w = t as u32;
            carry = t >> 32;
        }
        if carry != 0 {
            self.words.push(carry as u32);
        }
    }

    fn bits(&self) -> u64 {
        self.words.last().map_or(0, |w| {
            self.words.len() as u64 * 32 - u64::from(w.leading_zeros())
        })
    }

    fn shl(&mut self, n: u64) {
        let (words, bits) = ((n / 32) as usize, (n % 32) as u32);
        if bits != 0 {
            let mut carry = 0u32;
            for w in &mut self.words {
                let t = (u64::from(*w) << bits) | u64::from(carry);
                *w = t as u32;
                carry = (t >> 32) as u32;
            }
            if carry != 0 {
                self.words.push(carry);
            }
        }
        if words != 0 {
            self.words.splice(0..0, std::iter::repeat_n(0, words));
        }
    }

    fn ge(&self, other: &Big) -> bool {
        if self.words.len() != other.words.len() {
            return self.words.len() > other.words.len();
        }
        self.words.iter().rev().cmp(other.words.iter().rev()) != std::cmp::Ordering::Less
    }

    /// `self -= other`, `other` not greater.
    fn sub(&mut self, other: &Big) {
        let mut borrow = 0i64;
        for (i, w) in self.words.iter_mut().enumerate() {
            let t = i64::from(*w) - i64::from(other.words.get(i).copied().unwrap_or(0)) - borrow;
            *w = t as u32;
            borrow = i64::from(t < 0);
        }
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    fn is_zero(&self) -> bool {
        self.words.is_empty()
    }
}

#[cfg(test)]
mod tests {
    // `parse` stands in for `str::parse::<f64>` on its syntax: they must agree everywhere.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use rand::{Rng, SeedableRng};

    fn agrees(text: &str) {
        let expected = text.parse::<f64>().unwrap();
        let got = parse(text).unwrap();
        assert_eq!(
            got.to_bits(),
            expected.to_bits(),
            "{text}: {got:e} vs {expected:e}"
        );
    }

    #[test]
    fn syntax_is_digits_with_one_inner_dot() {
        for bad in [
            "", ".", "1.", ".5", "+1", "-1", "1e3", " 1", "1 ", "1.2.3", "0x1", "inf", "NaN",
            "1_0", "١",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        for good in [
            "0",
            "00",
            "0.0",
            "1",
            "1.0",
            "0.25",
            "007.500",
            "1.000000000000000000001",
        ] {
            agrees(good);
        }
    }

    #[test]
    fn edges_agree_with_str_parse() {
        let max = format!("{:.0}", f64::MAX);
        let min_sub = format!("{:.1100}", f64::from_bits(1));
        let min_normal = format!("{:.1100}", f64::MIN_POSITIVE);
        for text in [
            "9007199254740992",
            "9007199254740993",
            "9007199254740995",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "0.1",
            "0.3",
            "2.2250738585072011",
            "2.2250738585072014",
            "1.7976931348623157",
            max.as_str(),
            min_sub.as_str(),
            min_normal.as_str(),
            "0.000000000000000000000000000000000000000000000000000001",
            "1000000000000000000000000",
            "10000000000000000000000",
            "0.00000000000000000000001",
        ] {
            agrees(text);
        }
        // Past f64::MAX, and below the smallest subnormal.
        agrees(&format!("1{}", "0".repeat(400)));
        agrees(&format!("179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792.{}", "9".repeat(30)));
        agrees(&format!("0.{}1", "0".repeat(400)));
        agrees(&format!("0.{}2470328229206232720882", "0".repeat(323)));
        agrees(&format!("0.{}2470328229206232720883", "0".repeat(323)));
        agrees(&format!("0.{}24703282292062327208828439643411068618252990130716238221279284125033775363510437593264991818081799618989828234772285886546332835517796989819938739800539093906315035659515570226392290858392449105184435931802849936536152500319370457678249219365623669863658480757001585769269903706311928279558551332927834338409351978015531246597263579574622766465272827220056374006485499977096599470454020828166226237857393450736339007967761930577506740176324673600968951340535537458516661134223766678604162159680461914467291840300530057530849048765391711386591646239524912623653881879636239373280423891018672348497668235089863388587925628302755995657524455507255189313690836254779186948667994968324049705821028513185451396213837722826145437693412532098591327667236328125", "0".repeat(323)));
        agrees(&format!("0.{}247032822920623272088284396434110686182529901307162382212792841250337753635104375932649918180817996189898282347722858865463328355177969898199387398005390939063150356595155702263922908583924491051844359318028499365361525003193704576782492193656236698636584807570015857692699037063119282795585513329278343384093519780155312465972635795746227664652728272200563740064854999770965994704540208281662262378573934507363390079677619305775067401763246736009689513405355374585166611342237666786041621596804619144672918403005300575308490487653917113865916462395249126236538818796362393732804238910186723484976682350898633885879256283027559956575244555072551893136908362547791869486679949683240497058210285131854513962138377228261454376934125320985913276672363281255", "0".repeat(323)));
    }

    #[test]
    fn random_forms_agree_with_str_parse() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x0DEC_10A1);
        let digit = |rng: &mut rand::rngs::StdRng| char::from(b'0' + rng.gen_range(0..10u8));
        for _ in 0..200_000 {
            let whole_max = [3, 20, 40, 330][rng.gen_range(0..4)];
            let whole_len = rng.gen_range(1..=whole_max);
            let fraction_max = [3, 25, 60, 800][rng.gen_range(0..4)];
            let fraction_len = rng.gen_range(0..=fraction_max);
            let mut text: String = (0..whole_len).map(|_| digit(&mut rng)).collect();
            if rng.gen_bool(0.5) {
                text = format!("0{}", "0".repeat(rng.gen_range(0..5)));
                if rng.gen_bool(0.3) && fraction_len > 0 {
                    text = "0".to_string();
                }
            }
            if fraction_len > 0 {
                text.push('.');
                if rng.gen_bool(0.3) {
                    text.push_str(&"0".repeat(rng.gen_range(0..330)));
                }
                text.extend((0..fraction_len).map(|_| digit(&mut rng)));
            }
            agrees(&text);
        }
    }

    /// Every `f64`'s shortest form and its neighbourhood: the exact halfway points between
    /// adjacent values, and the decimals just below and above them.
    #[test]
    fn halfway_points_agree_with_str_parse() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x0DEC_10A2);
        for i in 0..20_000 {
            let x = match i % 4 {
                0 => f64::from_bits(rng.gen_range(0..0x7FF0_0000_0000_0000u64)),
                1 => rng.gen_range(0.0..1.0),
                2 => rng.gen_range(0.0..1e6),
                _ => f64::from_bits(rng.gen_range(0..0x0010_0000_0000_0000u64)),
            };
            agrees(&format!("{x:.0}"));
            let shortest = format!("{x}");
            if !shortest.contains('e') {
                agrees(&shortest);
            }
            agrees(&format!("{:.1}", x));
            agrees(&format!("{:.17}", x));
            // The halfway point to the next f64, exactly: (2x + ulp) / 2 has a finite decimal.
            let next = f64::from_bits(x.to_bits() + 1);
            if next.is_finite() {
                let half = halfway(x, next);
                agrees(&half);
                let (body, last) = half.split_at(half.len() - 1);
                let last = last.as_bytes()[0];
                if last > b'0' {
                    agrees(&format!("{body}{}", char::from(last - 1)));
                }
                agrees(&format!("{half}1"));
            }
        }
    }

    /// The exact decimal of (a + b) / 2 for adjacent finite non-negative `a < b`.
    fn halfway(a: f64, b: f64) -> String {
        // Both are integers times 2^-1075 (half the smallest subnormal): (a + b) / 2 as
        // k * 2^-1075 with k an integer, written out with enough fraction digits.
        let units = |x: f64| -> (u64, i32) {
            let bits = x.to_bits();
            let exp = ((bits >> 52) & 0x7FF) as i32;
            let frac = bits & ((1 << 52) - 1);
            if exp == 0 {
                (frac, -1074)
            } else {
                (frac | (1 << 52), exp - 1075)
            }
        };
        let ((ma, ea), (mb, eb)) = (units(a), units(b));
        let e = ea.min(eb);
        // (a + b) / 2 = (ma * 2^(ea - e) + mb * 2^(eb - e)) * 2^(e - 1)
        let mut sum = Big { words: Vec::new() };
        let mut ta = big_u64(ma);
        ta.shl((ea - e) as u64);
        let mut tb = big_u64(mb);
        tb.shl((eb - e) as u64);
        add(&mut sum, &ta);
        add(&mut sum, &tb);
        // value = sum * 2^(e - 1)
        to_decimal(&sum, e - 1)
    }

    fn big_u64(v: u64) -> Big {
        let mut b = Big {
            words: vec![v as u32, (v >> 32) as u32],
        };
        while b.words.last() == Some(&0) {
            b.words.pop();
        }
        b
    }

    fn add(a: &mut Big, b: &Big) {
        let mut carry = 0u64;
        for i in 0..a.words.len().max(b.words.len()) {
            if i == a.words.len() {
                a.words.push(0);
            }
            let t = u64::from(a.words[i]) + u64::from(b.words.get(i).copied().unwrap_or(0)) + carry;
            a.words[i] = t as u32;
            carry = t >> 32;
        }
        if carry != 0 {
            a.words.push(carry as u32);
        }
    }

    /// `n * 2^exp` written out exactly in decimal.
    fn to_decimal(n: &Big, exp: i32) -> String {
        let mut n = n.clone();
        let mut fraction_digits = 0usize;
        if exp >= 0 {
            n.shl(exp as u64);
        } else {
            // n / 2^k = n * 5^k / 10^k
            for _ in 0..-exp {
                n.mul_add(5, 0);
            }
            fraction_digits = (-exp) as usize;
        }
        let mut digits = Vec::new();
        while !n.is_zero() {
            let mut rem = 0u64;
            for w in n.words.iter_mut().rev() {
                let t = (rem << 32) | u64::from(*w);
                *w = (t / 10) as u32;
                rem = t % 10;
            }
            while n.words.last() == Some(&0) {
                n.words.pop();
            }
            digits.push(b'0' + rem as u8);
        }
        while digits.len() <= fraction_digits {
            digits.push(b'0');
        }
        digits.reverse();
        let text = String::from_utf8(digits).unwrap();
        let (whole, fraction) = text.split_at(text.len() - fraction_digits);
        if fraction.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{fraction}")
        }
    }
}
