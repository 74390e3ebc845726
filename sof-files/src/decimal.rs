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
                        pending_zeros += 1;
                    }
                } else {
                    // Bring the zeros in, then the digit: 38 digits at most are kept exactly.
                    for _ in 0..pending_zeros {
                        mantissa *= 10;
                        significant += 1;
                        if significant > 38 {
                            return Err(DecimalError::Precision);
                        }
                    }
                    pending_zeros = 0;
                    mantissa = mantissa * 10 + i128::from(b - b'0');
                    significant += 1;
                    if significant > 38 {
                        return Err(DecimalError::Precision);
                    }
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
}
