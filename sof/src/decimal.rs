//! Exact decimal numbers for FHIRPath arithmetic and comparisons.
//!
//! A value is `mantissa × 10^-scale` with an `i128` mantissa (38 significant digits, far more
//! than FHIR's decimal needs). Values are read from the text of a JSON number, so `1.50` keeps
//! its two decimal places (which matters to `lowBoundary`/`highBoundary`) when the JSON parser
//! keeps number text (serde_json's `arbitrary_precision`); without it, the text is the shortest
//! one that reads back as the same `f64`.

use std::cmp::Ordering;
use std::fmt;

/// Largest scale kept after a multiplication or division (digits after the point).
const MAX_SCALE: u32 = 28;
/// Significant digits a division that does not terminate keeps (FHIRPath asks for at least 8
/// decimal places; an f64 holds 17 significant digits).
const DIV_DIGITS: u32 = 20;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Decimal {
    mantissa: i128,
    scale: u32,
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

impl Decimal {
    pub(crate) fn from_i64(v: i64) -> Decimal {
        Decimal {
            mantissa: i128::from(v),
            scale: 0,
        }
    }

    /// Parses a JSON/FHIRPath number: `-12.340`, `1e-7`, `2.5E+3`.
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let (mant_text, exp) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (neg, digits) = match mant_text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, mant_text.strip_prefix('+').unwrap_or(mant_text)),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, f),
            None => (digits, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let mut mantissa: i128 = 0;
        for c in int_part.bytes().chain(frac_part.bytes()) {
            if !c.is_ascii_digit() {
                return None;
            }
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(c - b'0'))?;
        }
        let mut scale = i64::try_from(frac_part.len()).ok()? - i64::from(exp);
        if scale < 0 {
            mantissa = mantissa.checked_mul(pow10(u32::try_from(-scale).ok()?)?)?;
            scale = 0;
        }
        let scale = u32::try_from(scale).ok()?;
        if scale > 60 {
            return None;
        }
        Some(Decimal {
            mantissa: if neg { -mantissa } else { mantissa },
            scale,
        })
    }

    /// Digits after the decimal point as written.
    pub(crate) fn scale(&self) -> u32 {
        self.scale
    }

    fn rescale(&self, scale: u32) -> Option<i128> {
        if scale >= self.scale {
            self.mantissa.checked_mul(pow10(scale - self.scale)?)
        } else {
            None
        }
    }

    fn aligned(a: &Decimal, b: &Decimal) -> Option<(i128, i128, u32)> {
        let s = a.scale.max(b.scale);
        Some((a.rescale(s)?, b.rescale(s)?, s))
    }

    pub(crate) fn add(&self, o: &Decimal) -> Option<Decimal> {
        let (a, b, s) = Decimal::aligned(self, o)?;
        Some(Decimal {
            mantissa: a.checked_add(b)?,
            scale: s,
        })
    }

    pub(crate) fn sub(&self, o: &Decimal) -> Option<Decimal> {
        let (a, b, s) = Decimal::aligned(self, o)?;
        Some(Decimal {
            mantissa: a.checked_sub(b)?,
            scale: s,
        })
    }

    pub(crate) fn mul(&self, o: &Decimal) -> Option<Decimal> {
        Decimal {
            mantissa: self.mantissa.checked_mul(o.mantissa)?,
            scale: self.scale + o.scale,
        }
        .limit_scale()
    }

    /// `None` on division by zero or overflow (FHIRPath: the result is empty). The quotient
    /// is exact when it terminates within 28 decimal places, else it has 20 significant digits
    /// but at least 8 and at most 28 decimal places, the last one rounded half away from zero.
    pub(crate) fn div(&self, o: &Decimal) -> Option<Decimal> {
        if o.mantissa == 0 {
            return None;
        }
        let (a, b, _) = Decimal::aligned(self, o)?;
        let negative = (a < 0) != (b < 0);
        let (a, b) = (a.unsigned_abs(), b.unsigned_abs());
        let mut q = a / b;
        let mut r = a % b;
        let mut scale = 0u32;
        let significant = |q: u128| if q == 0 { 0 } else { q.ilog10() + 1 };
        while r != 0 && scale < MAX_SCALE && (significant(q) < DIV_DIGITS || scale < 8) {
            r = r.checked_mul(10)?;
            q = q.checked_mul(10)?.checked_add(r / b)?;
            r %= b;
            scale += 1;
        }
        // Round on what is left.
        if r != 0 && r.checked_mul(2)? >= b {
            q = q.checked_add(1)?;
        }
        let m = i128::try_from(q).ok()?;
        Some(
            Decimal {
                mantissa: if negative { -m } else { m },
                scale,
            }
            .trimmed(),
        )
    }

    /// Drops trailing zeros after the point (`1.5000` → `1.5`).
    pub(crate) fn trimmed(mut self) -> Decimal {
        while self.scale > 0 && self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.scale -= 1;
        }
        self
    }

    fn limit_scale(mut self) -> Option<Decimal> {
        if self.scale > MAX_SCALE {
            let d = pow10(self.scale - MAX_SCALE)?;
            self.mantissa /= d;
            self.scale = MAX_SCALE;
        }
        Some(self)
    }

    /// Integer division truncated toward zero (FHIRPath `div`).
    pub(crate) fn div_trunc(&self, o: &Decimal) -> Option<Decimal> {
        let (a, b, _) = Decimal::aligned(self, o)?;
        if b == 0 {
            return None;
        }
        Some(Decimal {
            mantissa: a / b,
            scale: 0,
        })
    }

    /// Remainder of the truncated division (FHIRPath `mod`).
    pub(crate) fn rem(&self, o: &Decimal) -> Option<Decimal> {
        let (a, b, s) = Decimal::aligned(self, o)?;
        if b == 0 {
            return None;
        }
        Some(Decimal {
            mantissa: a % b,
            scale: s,
        })
    }

    pub(crate) fn neg(&self) -> Decimal {
        Decimal {
            mantissa: -self.mantissa,
            scale: self.scale,
        }
    }

    /// Rounds toward negative infinity (`floor`) or positive infinity (`ceil`) to `scale` digits
    /// after the point; pads with zeros when `scale` is larger than the current one.
    pub(crate) fn round_to(&self, scale: u32, ceil: bool) -> Option<Decimal> {
        if scale >= self.scale {
            return Some(Decimal {
                mantissa: self.rescale(scale)?,
                scale,
            });
        }
        let d = pow10(self.scale - scale)?;
        let q = self.mantissa.div_euclid(d);
        let r = self.mantissa.rem_euclid(d);
        let q = if ceil && r != 0 { q + 1 } else { q };
        Some(Decimal { mantissa: q, scale })
    }

    /// Half a unit of the last written digit, one digit further: `0.05` for a scale of 1.
    pub(crate) fn half_ulp(scale: u32) -> Option<Decimal> {
        Some(Decimal {
            mantissa: 5,
            scale: scale.checked_add(1)?,
        })
    }

    pub(crate) fn to_i64(self) -> Option<i64> {
        if self.scale == 0 {
            i64::try_from(self.mantissa).ok()
        } else {
            None
        }
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Decimal) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        match Decimal::aligned(self, other) {
            Some((a, b, _)) => a.cmp(&b),
            // Alignment overflowed: one side has a huge magnitude; compare trimmed values by
            // sign and then by the integer parts, which cannot overflow.
            None => {
                let a = self.trimmed();
                let b = other.trimmed();
                let ia = a.mantissa / pow10(a.scale).unwrap_or(i128::MAX);
                let ib = b.mantissa / pow10(b.scale).unwrap_or(i128::MAX);
                ia.cmp(&ib)
            }
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        if digits.len() > scale {
            let (i, frac) = digits.split_at(digits.len() - scale);
            write!(f, "{sign}{i}.{frac}")
        } else {
            write!(f, "{sign}0.{}{digits}", "0".repeat(scale - digits.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_exactly() {
        for s in ["0", "1.0", "-1.50", "0.001", "123456789.123456789", "-0.5"] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("1e-7").to_string(), "0.0000001");
        assert_eq!(d("2.5E+3").to_string(), "2500");
        assert!(Decimal::parse("1.2.3").is_none());
        assert!(Decimal::parse("abc").is_none());
        assert!(Decimal::parse("").is_none());
    }

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!(d("0.1").add(&d("0.2")).unwrap().to_string(), "0.3");
        assert_eq!(d("3").sub(&d("0.25")).unwrap().to_string(), "2.75");
        assert_eq!(d("1.5").mul(&d("1.5")).unwrap().to_string(), "2.25");
        assert_eq!(d("3").div(&d("2")).unwrap().to_string(), "1.5");
        for (a, b, q) in [
            ("1", "3", "0.33333333333333333333"),
            ("2", "3", "0.66666666666666666667"),
            ("-2", "3", "-0.66666666666666666667"),
            ("2", "-3", "-0.66666666666666666667"),
            ("0.01237", "3", "0.0041233333333333333333"),
            ("1", "8", "0.125"),
            ("10", "4", "2.5"),
            ("1e-20", "3", "0.0000000000000000000033333333"),
            (
                "123456789012345678901234",
                "7",
                "17636684144620811271604.85714286",
            ),
        ] {
            assert_eq!(d(a).div(&d(b)).unwrap().to_string(), q, "{a} / {b}");
        }
        assert!(d("1").div(&d("0")).is_none());
        assert_eq!(d("7").div_trunc(&d("2")).unwrap().to_string(), "3");
        assert_eq!(d("7.5").rem(&d("2")).unwrap().to_string(), "1.5");
    }

    #[test]
    fn compares_across_scales() {
        assert_eq!(d("1.0"), d("1"));
        assert!(d("1.05") > d("1.0"));
        assert!(d("-2") < d("-1.99"));
    }

    #[test]
    fn rounds_toward_an_infinity() {
        assert_eq!(d("1.5865").round_to(2, false).unwrap().to_string(), "1.58");
        assert_eq!(d("1.5875").round_to(2, true).unwrap().to_string(), "1.59");
        assert_eq!(
            d("-1.5875").round_to(2, false).unwrap().to_string(),
            "-1.59"
        );
        assert_eq!(d("1.5").round_to(3, false).unwrap().to_string(), "1.500");
    }
}
