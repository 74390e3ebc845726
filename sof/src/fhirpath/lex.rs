//! FHIRPath tokens.

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// An identifier, keyword or operator word (`name`, `and`, `div`, `true`).
    Ident(String),
    /// A backtick-delimited identifier (never a keyword).
    Delimited(String),
    Str(String),
    /// Number text as written (`12`, `1.50`).
    Num(String),
    /// A date/time literal without its `@`, and its type (`date`, `dateTime`, `time`).
    Temporal(String, &'static str),
    /// `%name`, `%'name'` or ``%`name` ``.
    Ext(String),
    /// `$this`, `$index`, `$total`.
    Dollar(String),
    Sym(&'static str),
    End,
}

impl Tok {
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Delimited(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Num(s) => format!("number {s}"),
            Tok::Temporal(s, _) => format!("@{s}"),
            Tok::Ext(s) => format!("%{s}"),
            Tok::Dollar(s) => format!("${s}"),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::End => "end of expression".to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) tok: Tok,
    /// Character offset (0-based) in the expression.
    pub(super) pos: usize,
}

const SYMBOLS: &[&str] = &[
    "<=", ">=", "!=", "!~", ".", "(", ")", "[", "]", "{", "}", ",", "+", "-", "*", "/", "&", "|",
    "=", "~", "<", ">",
];

pub(super) fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let err = |pos: usize, what: &str| Err(format!("{what} at position {} in FHIRPath", pos + 1));
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // Comments: `//` to the end of the line, `/* ... */`.
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            loop {
                if i + 1 >= chars.len() {
                    return err(start, "unterminated comment");
                }
                if chars[i] == '*' && chars[i + 1] == '/' {
                    i += 2;
                    break;
                }
                i += 1;
            }
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if c.is_ascii_digit() {
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            Tok::Num(chars[start..i].iter().collect())
        } else if c == '\'' || c == '`' {
            let (s, next) = quoted(&chars, i)?;
            i = next;
            if c == '\'' {
                Tok::Str(s)
            } else {
                Tok::Delimited(s)
            }
        } else if c == '%' {
            i += 1;
            match chars.get(i) {
                Some('\'') | Some('`') => {
                    let (s, next) = quoted(&chars, i)?;
                    i = next;
                    Tok::Ext(s)
                }
                Some(ch) if ch.is_ascii_alphabetic() || *ch == '_' => {
                    let s = i;
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                    Tok::Ext(chars[s..i].iter().collect())
                }
                _ => return err(start, "expected a name after '%'"),
            }
        } else if c == '$' {
            i += 1;
            let s = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            if s == i {
                return err(start, "expected a name after '$'");
            }
            Tok::Dollar(chars[s..i].iter().collect())
        } else if c == '@' {
            i += 1;
            let s = i;
            while i < chars.len() {
                let ch = chars[i];
                let fraction_dot =
                    ch == '.' && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
                if ch.is_ascii_digit() || matches!(ch, '-' | ':' | 'T' | '+' | 'Z') || fraction_dot
                {
                    i += 1;
                } else {
                    break;
                }
            }
            let lit: String = chars[s..i].iter().collect();
            match temporal_type(&lit) {
                Some(ty) => Tok::Temporal(lit.trim_start_matches('T').to_string(), ty),
                None => return err(start, "invalid date/time literal"),
            }
        } else if let Some(sym) = SYMBOLS.iter().find(|s| {
            let n = s.len();
            i + n <= chars.len() && chars[i..i + n].iter().copied().eq(s.chars())
        }) {
            i += sym.len();
            Tok::Sym(sym)
        } else {
            return err(start, &format!("unexpected character '{c}'"));
        };
        out.push(Token { tok, pos: start });
    }
    out.push(Token {
        tok: Tok::End,
        pos: chars.len(),
    });
    Ok(out)
}

/// A quoted string or delimited identifier starting at `chars[start]`; returns its text and the
/// index after the closing quote.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let q = chars[start];
    let mut i = start + 1;
    let mut s = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == q {
            return Ok((s, i + 1));
        }
        if c == '\\' {
            i += 1;
            let Some(&e) = chars.get(i) else { break };
            match e {
                'n' => s.push('\n'),
                'r' => s.push('\r'),
                't' => s.push('\t'),
                'f' => s.push('\u{c}'),
                'u' => {
                    let hex: String = chars.get(i + 1..i + 5).unwrap_or(&[]).iter().collect();
                    let cp = u32::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == 4)
                        .and_then(char::from_u32)
                        .ok_or_else(|| {
                            format!("invalid \\u escape at position {} in FHIRPath", i + 1)
                        })?;
                    s.push(cp);
                    i += 4;
                }
                other => s.push(other),
            }
            i += 1;
            continue;
        }
        s.push(c);
        i += 1;
    }
    Err(format!(
        "unterminated {} starting at position {} in FHIRPath",
        if q == '\'' { "string" } else { "identifier" },
        start + 1
    ))
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `s` is `hh`, `hh:mm`, `hh:mm:ss` or `hh:mm:ss.fff…`.
pub(super) fn is_time(s: &str) -> bool {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    if parts.is_empty() || parts.len() > 3 || !parts.iter().all(|p| digits(p, 2)) {
        return false;
    }
    match frac {
        Some(f) => parts.len() == 3 && !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()),
        None => true,
    }
}

/// Whether `s` is `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
pub(super) fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y] => digits(y, 4),
        [y, m] => digits(y, 4) && digits(m, 2),
        [y, m, d] => digits(y, 4) && digits(m, 2) && digits(d, 2),
        _ => false,
    }
}

/// Whether `s` is a time zone: `Z`, `+hh:mm`, `-hh:mm`.
pub(super) fn is_zone(s: &str) -> bool {
    s == "Z"
        || (s.is_ascii()
            && (s.starts_with('+') || s.starts_with('-'))
            && s.len() == 6
            && digits(&s[1..3], 2)
            && &s[3..4] == ":"
            && digits(&s[4..6], 2))
}

/// Splits a dateTime into date, optional time and optional zone; `None` if malformed.
pub(super) fn split_date_time(s: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let (date, rest) = match s.split_once('T') {
        Some((d, r)) => (d, Some(r)),
        None => (s, None),
    };
    if !is_date(date) {
        return None;
    }
    let Some(rest) = rest else {
        return Some((date, None, None));
    };
    if rest.is_empty() {
        return Some((date, None, None));
    }
    let zone_at = rest.find(['Z', '+', '-']);
    let (time, zone) = match zone_at {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    if !is_time(time) || zone.is_some_and(|z| !is_zone(z)) {
        return None;
    }
    Some((date, Some(time), zone))
}

/// The type of a date/time literal (text after `@`).
fn temporal_type(s: &str) -> Option<&'static str> {
    if let Some(t) = s.strip_prefix('T') {
        return is_time(t).then_some("time");
    }
    if is_date(s) {
        return Some("date");
    }
    split_date_time(s).map(|_| "dateTime")
}
