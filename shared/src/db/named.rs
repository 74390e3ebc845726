//! Statements written with named parameters (`:type`, `:cursor`, …): numbered `$1, $2, …` in
//! the order of their first use, and bound with only the values the text uses. A statement
//! assembled from optional conditions then binds exactly what it reads, with no placeholder
//! kept alive by a dummy condition. `::` is a cast, never a parameter.

use tokio_postgres::types::ToSql;

use super::DbError;

/// A value to bind.
pub type Value<'a> = &'a (dyn ToSql + Sync);

/// `text` with its `:name` parameters numbered, and the values to bind in that order (from
/// `values`, by name). A name the text uses but `values` lacks is an error.
pub fn number<'a>(
    text: &str,
    values: &[(&str, Value<'a>)],
) -> Result<(String, Vec<Value<'a>>), DbError> {
    let bytes = text.as_bytes();
    let mut sql = String::with_capacity(text.len());
    let mut used: Vec<&str> = Vec::new();
    let mut bound: Vec<Value<'a>> = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let starts_name = bytes[i] == b':'
            && (i == 0 || bytes[i - 1] != b':')
            && bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_lowercase() || *b == b'_');
        if !starts_name {
            i += 1;
            continue;
        }
        let end = (i + 1..bytes.len())
            .find(|&j| !(bytes[j].is_ascii_lowercase() || bytes[j] == b'_'))
            .unwrap_or(bytes.len());
        let name = &text[i + 1..end];
        let n = match used.iter().position(|u| *u == name) {
            Some(k) => k + 1,
            None => {
                let value = values
                    .iter()
                    .find(|(v, _)| *v == name)
                    .map(|(_, value)| *value)
                    .ok_or_else(|| DbError::Unbound(name.to_string()))?;
                used.push(name);
                bound.push(value);
                used.len()
            }
        };
        sql.push_str(&text[copied..i]);
        sql.push('$');
        sql.push_str(&n.to_string());
        copied = end;
        i = end;
    }
    sql.push_str(&text[copied..]);
    Ok((sql, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_numbered_by_first_use_and_only_used_ones_are_bound() {
        let (a, b, c) = (1i64, "x", 2i64);
        let (sql, values) = number(
            "SELECT :b::text, r.x::int8 WHERE y = :a AND (:b IS NULL OR z = :b)",
            &[("a", &a), ("b", &b), ("c", &c)],
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT $1::text, r.x::int8 WHERE y = $2 AND ($1 IS NULL OR z = $1)"
        );
        assert_eq!(values.len(), 2, "c is not used, so not bound");
        assert!(matches!(
            number("SELECT :missing", &[]),
            Err(DbError::Unbound(name)) if name == "missing"
        ));
    }
}
