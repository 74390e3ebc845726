//! Exact decimal text → the unscaled integer of a Parquet DECIMAL(precision, scale).
//!
//! The input is the JSON text of a number (`-12.50`, `1e-7`, `3`): with serde_json's
//! `arbitrary_precision` feature it is the text of the source document; without it the shortest
//! text that reads back as the same `f64` (`1.5` for `1.50`, `1e-7`). Either way the text is read
//! digit by digit, never through floating point, so `0.1` is exactly one tenth.

/// Why a number does not fit a DECIMAL(precision, scale) column.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecimalError {
    /// Not a decimal number at all.
    Syntax,
    /// More digits after the point than the scale (once trailing zeros are dropped): storing it
    /// would round.
    Scale,
    /// More digits in all than the precision.
    Precision,
}

/// The value of `text` as an integer count of `10^-scale` units, when it fits `precision` digits
/// without rounding. `precision` is at most 38 (an `i128` holds any 38-digit number).
pub(crate) fn to_unscaled(text: &str, precision: u8, scale: i8) -> Result<i128, DecimalError> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    // Significant digits without leading zeros, with the count of trailing zeros kept apart so
    // that `1.500000000000000000000000000000000000000` is 15 × 10^-1, not 40 digits.
    let mut mantissa: i128 = 0;
    let mut significant: u32 = 0; // digits in `mantissa` (leading zeros excluded)
    let mut pending_zeros: u32 = 0; // zeros seen after the last nonzero digit, not yet in mantissa
    let mut frac_digits: i64 = 0;
    let mut any_digit = false;
    let mut seen_point = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'0'..=b'9' => {
                any_digit = true;
                if seen_point {
                    frac_digits += 1;
                }
                if b == b'0' {
                    if significant > 0 {
                        pending_zeros = pending_zeros.saturating_add(1);
                    }
                } else {
                    // Bring the zeros in, then the digit. Past 38 digits the mantissa stops
                    // (it would overflow) but the count goes on: such a number fits no column.
                    for _ in 0..pending_zeros {
                        if significant < 38 {
                            mantissa *= 10;
                        }
                        significant = significant.saturating_add(1);
                    }
                    pending_zeros = 0;
                    if significant < 38 {
                        mantissa = mantissa * 10 + i128::from(b - b'0');
                    }
                    significant = significant.saturating_add(1);
                }
            }
            b'.' if !seen_point => seen_point = true,
            b'e' | b'E' => break,
            _ => return Err(DecimalError::Syntax),
        }
        i += 1;
    }
    if !any_digit {
        return Err(DecimalError::Syntax);
    }
    let mut exponent: i64 = 0;
    if i < bytes.len() {
        // bytes[i] is 'e' or 'E'.
        i += 1;
        let exp_negative = match bytes.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        if i >= bytes.len() {
            return Err(DecimalError::Syntax);
        }
        for &b in &bytes[i..] {
            if !b.is_ascii_digit() {
                return Err(DecimalError::Syntax);
            }
            // Saturate: an exponent this large overflows any column either way.
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(i64::from(b - b'0'));
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if mantissa == 0 {
        return Ok(0);
    }
    // value = mantissa × 10^(pending_zeros - frac_digits + exponent); in units of 10^-scale:
    let shift = i64::from(pending_zeros)
        .saturating_sub(frac_digits)
        .saturating_add(exponent)
        .saturating_add(i64::from(scale));
    if shift < 0 {
        return Err(DecimalError::Scale);
    }
    let digits = i64::from(significant).saturating_add(shift);
    if digits > i64::from(precision) {
        return Err(DecimalError::Precision);
    }
    // digits ≤ precision ≤ 38, so neither the power nor the product overflows an i128.
    let value = mantissa * 10i128.pow(shift as u32);
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values() {
        assert_eq!(to_unscaled("1.50", 38, 2), Ok(150));
        assert_eq!(to_unscaled("1.5", 38, 2), Ok(150));
        assert_eq!(to_unscaled("0.1", 38, 18), Ok(100_000_000_000_000_000));
        assert_eq!(to_unscaled("-0.001", 10, 3), Ok(-1));
        assert_eq!(to_unscaled("+7", 10, 0), Ok(7));
        assert_eq!(to_unscaled("0", 1, 0), Ok(0));
        assert_eq!(to_unscaled("-0.000", 1, 0), Ok(0));
        assert_eq!(to_unscaled("1e-7", 38, 18), Ok(100_000_000_000));
        assert_eq!(to_unscaled("1.25E+2", 10, 1), Ok(1250));
        assert_eq!(to_unscaled("120e-1", 10, 0), Ok(12));
        assert_eq!(to_unscaled("5.", 10, 1), Ok(50));
        assert_eq!(to_unscaled(".5", 10, 1), Ok(5));
        // Trailing zeros beyond the scale are not digits that would be lost.
        assert_eq!(
            to_unscaled("2.500000000000000000000000000000000000000", 38, 1),
            Ok(25)
        );
        assert_eq!(
            to_unscaled("1000000000000000000000000000000000000000e-3", 38, 0),
            Ok(10i128.pow(36))
        );
        assert_eq!(
            to_unscaled("1000000000000000000000000000000000000000e-1", 38, 0),
            Err(DecimalError::Precision)
        );
        assert_eq!(
            to_unscaled("10000000000000000000000000000000000000e-3", 38, 0),
            Ok(10i128.pow(34))
        );
        // The largest of 38 digits.
        let max = "9".repeat(38);
        assert_eq!(
            to_unscaled(&max, 38, 0),
            Ok(max.parse::<i128>().unwrap_or_default())
        );
    }

    #[test]
    fn what_does_not_fit() {
        assert_eq!(to_unscaled("1.234", 38, 2), Err(DecimalError::Scale));
        assert_eq!(to_unscaled("1e-19", 38, 18), Err(DecimalError::Scale));
        assert_eq!(to_unscaled("123", 4, 2), Err(DecimalError::Precision));
        assert_eq!(to_unscaled("99.99", 4, 2), Ok(9999));
        assert_eq!(to_unscaled("1e21", 38, 18), Err(DecimalError::Precision));
        assert_eq!(
            to_unscaled("1e999999999999999999999", 38, 18),
            Err(DecimalError::Precision)
        );
        assert_eq!(
            to_unscaled("1e-999999999999999999999", 38, 18),
            Err(DecimalError::Scale)
        );
        assert_eq!(
            to_unscaled(&"1".repeat(39), 38, 0),
            Err(DecimalError::Precision)
        );
    }

    #[test]
    fn syntax() {
        for bad in [
            "", "-", ".", "1.2.3", "1e", "1e+", "abc", "1,5", "0x10", "1e5.5", "NaN",
        ] {
            assert_eq!(to_unscaled(bad, 38, 18), Err(DecimalError::Syntax), "{bad}");
        }
    }

    /// The same reading done on strings: sign, exponent, point and zeros moved textually.
    fn reference(text: &str, precision: u8, scale: i8) -> Result<i128, DecimalError> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (mantissa, exp) = match rest.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i64>().map_err(|_| DecimalError::Syntax)?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = format!("{int}{frac}");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DecimalError::Syntax);
        }
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Ok(0);
        }
        let trimmed = digits.trim_end_matches('0');
        let exp = exp - frac.len() as i64 + (digits.len() - trimmed.len()) as i64;
        let shift = exp + i64::from(scale);
        if shift < 0 {
            return Err(DecimalError::Scale);
        }
        if trimmed.len() as i64 + shift > i64::from(precision) {
            return Err(DecimalError::Precision);
        }
        let v: i128 = format!("{trimmed}{}", "0".repeat(shift as usize))
            .parse()
            .map_err(|_| DecimalError::Syntax)?;
        Ok(if negative { -v } else { v })
    }

    #[test]
    fn random_texts_read_as_the_string_reading_does() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..200_000 {
            let mut t = String::new();
            match next(3) {
                0 => t.push('-'),
                1 if next(4) == 0 => t.push('+'),
                _ => {}
            }
            let digit = |d: u64| char::from(b'0' + d as u8);
            for _ in 0..1 + next(25) {
                // Zeros are common, to exercise leading and trailing ones.
                t.push(if next(3) == 0 { '0' } else { digit(next(10)) });
            }
            if next(2) == 0 {
                t.push('.');
                for _ in 0..next(25) {
                    t.push(if next(3) == 0 { '0' } else { digit(next(10)) });
                }
            }
            if next(4) == 0 {
                t.push(if next(2) == 0 { 'e' } else { 'E' });
                if next(2) == 0 {
                    t.push('-');
                }
                t.push_str(&next(45).to_string());
            }
            let precision = 1 + next(38) as u8;
            let scale = next(u64::from(precision) + 1) as i8;
            assert_eq!(
                to_unscaled(&t, precision, scale),
                reference(&t, precision, scale),
                "{t} ({precision},{scale})"
            );
        }
    }

    #[test]
    fn f64_texts_are_exact() {
        // Rust writes an f64 in full (0.0000001), serde_json with an exponent (1e-7): both are
        // the same number.
        for x in [0.1, 1.5, 98.6, 1e-7, 123456.789, 2.5e-18, 1e19, -0.0] {
            let plain = to_unscaled(&format!("{x}"), 38, 18);
            let json = to_unscaled(&serde_json::json!(x).to_string(), 38, 18);
            assert_eq!(plain, json, "{x}");
        }
        assert_eq!(
            to_unscaled(&serde_json::json!(1e-7).to_string(), 38, 18),
            Ok(10i128.pow(11))
        );
    }
}
