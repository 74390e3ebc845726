//! Evaluation of a compiled expression over a resource held as a [`Json`] tree.
//!
//! Items borrow from the resource (and from the view's constants and literals); only computed
//! values (arithmetic, `join`, boundaries) own their data. Member paths are walked without
//! intermediate collections.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use super::temporal::Temporal;
use super::{boundary, BinOp, Expr, Func, Step, StrFn, Var};
use crate::decimal::Decimal;
use crate::json::{Json, Object};
use crate::types::{self, fhir_is_a, kind_of, Kind, TypeSpec};

/// One item of a FHIRPath collection.
#[derive(Clone, Debug)]
pub(crate) enum Item<'a> {
    /// A node of the resource (or a constant's value). `ty` is its FHIR type when known (from a
    /// choice suffix, `ofType` or a constant declaration); `ext` is the `_name` sibling object
    /// of a primitive, holding its `id` and `extension`.
    Node {
        v: &'a Json<'a>,
        ty: Option<&'static str>,
        ext: Option<&'a Json<'a>>,
    },
    Bool(bool),
    Int(i64),
    Dec(Decimal),
    Str(Cow<'a, str>, Option<&'static str>),
}

/// A view constant: its value and FHIR type.
#[derive(Debug)]
pub(crate) struct Constant {
    pub(crate) value: Json<'static>,
    pub(crate) ty: &'static str,
}

/// Evaluation environment.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) resource: &'a Json<'a>,
    pub(crate) constants: &'a [Constant],
    pub(crate) row_index: i64,
}

pub(crate) type Res<T> = Result<T, String>;

impl<'a> Item<'a> {
    pub(crate) fn node(v: &'a Json<'a>) -> Item<'a> {
        Item::Node {
            v,
            ty: None,
            ext: None,
        }
    }

    /// The item as an output value.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Item::Node { v, .. } => v.to_value(),
            Item::Bool(b) => Value::Bool(*b),
            Item::Int(i) => Value::from(*i),
            Item::Dec(d) => decimal_json(d),
            Item::Str(s, _) => Value::String(s.to_string()),
        }
    }

    fn type_hint(&self) -> Option<&'static str> {
        match self {
            Item::Node { ty, .. } => *ty,
            Item::Bool(_) => Some("boolean"),
            Item::Int(_) => Some("integer"),
            Item::Dec(_) => Some("decimal"),
            Item::Str(_, ty) => Some(ty.unwrap_or("string")),
        }
    }

    fn describe(&self) -> &'static str {
        if let Some(t) = self.type_hint() {
            return t;
        }
        match self {
            Item::Node { v, .. } => match v {
                Json::Null => "null",
                Json::Bool(_) => "boolean",
                Json::Number(_) => "number",
                Json::String(_) => "string",
                Json::Array(_) => "array",
                Json::Object(_) => "object",
            },
            _ => "value",
        }
    }
}

/// A JSON number for a decimal: exact text when the JSON parser keeps number text, otherwise the
/// nearest `f64`.
pub(crate) fn decimal_json(d: &Decimal) -> Value {
    let text = d.to_string();
    match text.parse::<serde_json::Number>() {
        Ok(n) => Value::Number(n),
        Err(_) => Value::Null,
    }
}

/// A primitive view of an item, for operators.
#[derive(Debug)]
enum Prim<'x> {
    Null,
    Bool(bool),
    Int(i64),
    Dec(Decimal),
    Str(&'x str),
    Json(&'x Json<'x>),
}

fn prim<'x>(it: &'x Item<'_>) -> Prim<'x> {
    match it {
        Item::Node { v, .. } => match v {
            Json::Null => Prim::Null,
            Json::Bool(b) => Prim::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Prim::Int(i),
                None => match Decimal::parse(&n.text()) {
                    Some(d) => Prim::Dec(d),
                    None => Prim::Null,
                },
            },
            Json::String(s) => Prim::Str(s),
            other => Prim::Json(other),
        },
        Item::Bool(b) => Prim::Bool(*b),
        Item::Int(i) => Prim::Int(*i),
        Item::Dec(d) => Prim::Dec(*d),
        Item::Str(s, _) => Prim::Str(s),
    }
}

fn num(p: &Prim<'_>) -> Option<Decimal> {
    match p {
        Prim::Int(i) => Some(Decimal::from_i64(*i)),
        Prim::Dec(d) => Some(*d),
        _ => None,
    }
}

/// Evaluates `e` with `focus` as the input collection, appending the result to `out`.
pub(crate) fn eval<'a>(
    e: &'a Expr,
    focus: &[Item<'a>],
    env: &Env<'a>,
    out: &mut Vec<Item<'a>>,
) -> Res<()> {
    match e {
        Expr::Empty => {}
        Expr::Bool(b) => out.push(Item::Bool(*b)),
        Expr::Str(s, ty) => out.push(Item::Str(Cow::Borrowed(s), *ty)),
        Expr::Int(i) => out.push(Item::Int(*i)),
        Expr::Dec(d) => out.push(Item::Dec(*d)),
        Expr::This => out.extend_from_slice(focus),
        Expr::Var(Var::Resource) => out.push(Item::node(env.resource)),
        Expr::Var(Var::Context) => out.extend_from_slice(focus),
        Expr::Var(Var::RowIndex) => out.push(Item::Int(env.row_index)),
        Expr::Var(Var::Constant(i)) => {
            let c = env
                .constants
                .get(*i)
                .ok_or_else(|| "constant index out of range".to_string())?;
            out.push(Item::Node {
                v: &c.value,
                ty: Some(c.ty),
                ext: None,
            });
        }
        Expr::TypeFilter(name) => {
            for it in focus {
                if let Item::Node { v, .. } = it {
                    if v.get("resourceType").and_then(Json::as_str) == Some(name) {
                        out.push(it.clone());
                    }
                }
            }
        }
        Expr::Path(base, steps) => match base {
            None => {
                for it in focus {
                    walk(it, steps, out);
                }
            }
            Some(b) => {
                let mut tmp = Vec::new();
                eval(b, focus, env, &mut tmp)?;
                for it in &tmp {
                    walk(it, steps, out);
                }
            }
        },
        Expr::Index(base, idx) => {
            let mut items = Vec::new();
            eval(base, focus, env, &mut items)?;
            let mut iv = Vec::new();
            eval(idx, focus, env, &mut iv)?;
            let i = match iv.as_slice() {
                [] => return Ok(()),
                [one] => match prim(one) {
                    Prim::Int(i) => i,
                    _ => {
                        return Err(format!(
                            "an index must be an integer, not {}",
                            one.describe()
                        ))
                    }
                },
                _ => return Err("an index must be a single integer".to_string()),
            };
            if let Some(it) = usize::try_from(i).ok().and_then(|i| items.get(i)) {
                out.push(it.clone());
            }
        }
        Expr::Neg(inner) => {
            let mut v = Vec::new();
            eval(inner, focus, env, &mut v)?;
            match v.as_slice() {
                [] => {}
                [one] => match prim(one) {
                    Prim::Int(i) => out.push(Item::Int(-i)),
                    Prim::Dec(d) => out.push(Item::Dec(d.neg())),
                    _ => return Err(format!("cannot negate {}", one.describe())),
                },
                _ => return Err("unary '-' needs a single value".to_string()),
            }
        }
        Expr::Bin(op, l, r) => binary(*op, l, r, focus, env, out)?,
        Expr::Call(base, func) => match base {
            None => call(func, focus, focus, env, out)?,
            Some(b) => {
                let mut input = Vec::new();
                eval(b, focus, env, &mut input)?;
                call(func, &input, focus, env, out)?;
            }
        },
    }
    Ok(())
}

/// Member navigation along `steps` from `it`.
fn walk<'a>(it: &Item<'a>, steps: &'a [Step], out: &mut Vec<Item<'a>>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(it.clone());
        return;
    };
    children(it, step, &mut |child| walk(&child, rest, out));
}

/// The `_name` sibling of a primitive element (its `id` and `extension`), looked for only when
/// the object has an underscore key at all.
fn primitive_ext<'m>(m: &'m Object<'m>, value: &Json<'_>, ext_name: &str) -> Option<&'m Json<'m>> {
    let primitive = match value {
        Json::Array(a) => a.first().is_some_and(|x| !x.is_object()),
        Json::Object(_) => false,
        _ => true,
    };
    if primitive && m.keys().any(|k| k.starts_with('_')) {
        m.get(ext_name)
    } else {
        None
    }
}

fn children<'a>(it: &Item<'a>, step: &'a Step, f: &mut dyn FnMut(Item<'a>)) {
    let Item::Node { v, ext, .. } = it else {
        return;
    };
    match v {
        Json::Object(m) => {
            if let Some(c) = m.get(&step.name) {
                emit(c, step.ty, primitive_ext(m, c, &step.ext_name), f);
                return;
            }
            // A choice element: `value` → `valueQuantity`, `valueString`, …
            let name = &*step.name;
            for (k, c) in m.iter() {
                if k.len() > name.len() && k.starts_with(name) {
                    if let Some(t) = types::choice_suffix_type(&k[name.len()..]) {
                        let ext = m
                            .iter()
                            .find(|(k2, _)| {
                                k2.len() == k.len() + 1 && k2.strip_prefix('_') == Some(k)
                            })
                            .map(|(_, x)| x);
                        emit(c, Some(t), ext, f);
                        return;
                    }
                }
            }
            // A primitive with only an extension (no value).
            if let Some(x) = m.get(&step.ext_name) {
                emit(&NULL, None, Some(x), f);
            }
        }
        // `id` and `extension` of a primitive live in its `_name` sibling.
        _ => {
            if let Some(x) = ext {
                if matches!(&*step.name, "id" | "extension") {
                    children(&Item::node(x), step, f);
                }
            }
        }
    }
}

static NULL: Json<'static> = Json::Null;

fn emit<'a>(
    c: &'a Json<'a>,
    ty: Option<&'static str>,
    ext: Option<&'a Json<'a>>,
    f: &mut dyn FnMut(Item<'a>),
) {
    match c {
        Json::Array(items) => {
            let exts = ext.and_then(Json::as_array);
            for (i, v) in items.iter().enumerate() {
                let x = exts.and_then(|e| e.get(i)).filter(|x| x.is_object());
                if v.is_null() && x.is_none() {
                    continue;
                }
                f(Item::Node { v, ty, ext: x });
            }
            // `_given` longer than `given` cannot happen in valid FHIR JSON; ignored.
        }
        Json::Null => {
            if let Some(x) = ext.filter(|x| x.is_object()) {
                f(Item::Node {
                    v: &NULL,
                    ty,
                    ext: Some(x),
                });
            }
        }
        v => f(Item::Node {
            v,
            ty,
            ext: ext.filter(|x| x.is_object()),
        }),
    }
}

/// Three-valued boolean of a collection (FHIRPath singleton evaluation): empty → `None`, one
/// boolean → its value, one other item → `true`; more than one item is an error.
pub(crate) fn truth(items: &[Item<'_>]) -> Res<Option<bool>> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(match prim(one) {
            Prim::Bool(b) => b,
            _ => true,
        })),
        _ => Err(format!(
            "expected a single boolean but got a collection of {} items",
            items.len()
        )),
    }
}

fn binary<'a>(
    op: BinOp,
    l: &'a Expr,
    r: &'a Expr,
    focus: &[Item<'a>],
    env: &Env<'a>,
    out: &mut Vec<Item<'a>>,
) -> Res<()> {
    let mut lv = Vec::new();
    eval(l, focus, env, &mut lv)?;
    // Short-circuit the boolean operators where the left side decides.
    match op {
        BinOp::And | BinOp::Or | BinOp::Implies => {
            let a = truth(&lv)?;
            let decided = match (op, a) {
                (BinOp::And, Some(false)) => Some(false),
                (BinOp::Or, Some(true)) => Some(true),
                (BinOp::Implies, Some(false)) => Some(true),
                _ => None,
            };
            if let Some(b) = decided {
                out.push(Item::Bool(b));
                return Ok(());
            }
            let mut rv = Vec::new();
            eval(r, focus, env, &mut rv)?;
            let b = truth(&rv)?;
            let res = match op {
                BinOp::And => match (a, b) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                BinOp::Or => match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                _ => match (a, b) {
                    (Some(true), b) => b,
                    (None, Some(true)) => Some(true),
                    _ => None,
                },
            };
            if let Some(b) = res {
                out.push(Item::Bool(b));
            }
            return Ok(());
        }
        _ => {}
    }
    let mut rv = Vec::new();
    eval(r, focus, env, &mut rv)?;
    match op {
        BinOp::Xor => {
            if let (Some(a), Some(b)) = (truth(&lv)?, truth(&rv)?) {
                out.push(Item::Bool(a != b));
            }
        }
        BinOp::Union => {
            for it in lv.into_iter().chain(rv) {
                let mut dup = false;
                for o in out.iter() {
                    if equal(o, &it) == Some(true) {
                        dup = true;
                        break;
                    }
                }
                if !dup {
                    out.push(it);
                }
            }
        }
        BinOp::In | BinOp::Contains => {
            let (elem, coll) = if op == BinOp::In {
                (&lv, &rv)
            } else {
                (&rv, &lv)
            };
            if let Some(x) = single(elem, op)? {
                let found = coll.iter().any(|c| equal(x, c) == Some(true));
                out.push(Item::Bool(found));
            }
        }
        BinOp::Equiv | BinOp::NotEquiv => {
            // Same size, and every item equivalent to a distinct item of the other, in any order.
            let mut used = vec![false; rv.len()];
            let mut eq = lv.len() == rv.len();
            if eq {
                for a in &lv {
                    match rv
                        .iter()
                        .enumerate()
                        .find(|(i, b)| !used[*i] && equivalent(a, b))
                    {
                        Some((i, _)) => used[i] = true,
                        None => {
                            eq = false;
                            break;
                        }
                    }
                }
            }
            out.push(Item::Bool(if op == BinOp::Equiv { eq } else { !eq }));
        }
        BinOp::Eq | BinOp::Ne => {
            if lv.is_empty() || rv.is_empty() {
                return Ok(());
            }
            let mut eq = lv.len() == rv.len();
            if eq {
                for (a, b) in lv.iter().zip(&rv) {
                    match equal(a, b) {
                        Some(true) => {}
                        Some(false) => {
                            eq = false;
                            break;
                        }
                        None => return Ok(()),
                    }
                }
            }
            out.push(Item::Bool(if op == BinOp::Eq { eq } else { !eq }));
        }
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            let (a, b) = match (single(&lv, op)?, single(&rv, op)?) {
                (Some(a), Some(b)) => (a, b),
                _ => return Ok(()),
            };
            let Some(ord) = compare(a, b)? else {
                return Ok(());
            };
            out.push(Item::Bool(match op {
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Gt => ord == Ordering::Greater,
                BinOp::Le => ord != Ordering::Greater,
                _ => ord != Ordering::Less,
            }));
        }
        BinOp::Concat => {
            let a = string_of(single(&lv, op)?)?;
            let b = string_of(single(&rv, op)?)?;
            out.push(Item::Str(Cow::Owned(format!("{a}{b}")), None));
        }
        _ => {
            let (a, b) = match (single(&lv, op)?, single(&rv, op)?) {
                (Some(a), Some(b)) => (a, b),
                _ => return Ok(()),
            };
            if let Some(it) = arithmetic(op, a, b)? {
                out.push(it);
            }
        }
    }
    Ok(())
}

fn single<'x, 'a>(items: &'x [Item<'a>], op: BinOp) -> Res<Option<&'x Item<'a>>> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(format!(
            "operator '{}' needs single values but got a collection of {} items",
            op.symbol(),
            items.len()
        )),
    }
}

fn string_of(it: Option<&Item<'_>>) -> Res<String> {
    let Some(it) = it else {
        return Ok(String::new());
    };
    match prim(it) {
        Prim::Null => Ok(String::new()),
        Prim::Str(s) => Ok(s.to_string()),
        Prim::Bool(b) => Ok(b.to_string()),
        Prim::Int(i) => Ok(i.to_string()),
        Prim::Dec(d) => Ok(d.to_string()),
        Prim::Json(_) => Err(format!("cannot use {} as a string", it.describe())),
    }
}

fn is_temporal(it: &Item<'_>) -> bool {
    matches!(
        it.type_hint(),
        Some("date" | "dateTime" | "instant" | "time")
    )
}

/// Both items as dates/times when at least one is known to be one and both read as such.
fn temporals(a: &Item<'_>, b: &Item<'_>, x: &str, y: &str) -> Option<(Temporal, Temporal)> {
    if !(is_temporal(a) || is_temporal(b)) {
        return None;
    }
    Some((Temporal::parse(x)?, Temporal::parse(y)?))
}

/// FHIRPath `=` on two items: `None` when the result is empty (a null node, or dates of
/// different precision that agree as far as both go).
fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    let (pa, pb) = (prim(a), prim(b));
    if let (Prim::Str(x), Prim::Str(y)) = (&pa, &pb) {
        if let Some((ta, tb)) = temporals(a, b, x, y) {
            return ta.compare(&tb).map(|o| o == Ordering::Equal);
        }
    }
    Some(match (&pa, &pb) {
        (Prim::Null, _) | (_, Prim::Null) => return None,
        (Prim::Bool(x), Prim::Bool(y)) => x == y,
        (Prim::Str(x), Prim::Str(y)) => x == y,
        (Prim::Json(x), Prim::Json(y)) => x == y,
        _ => match (num(&pa), num(&pb)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    })
}

/// FHIRPath `~` on two items: strings ignoring case and differences in whitespace, numbers
/// at the precision of the less precise one, dates only at the same precision.
fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    let (pa, pb) = (prim(a), prim(b));
    match (&pa, &pb) {
        (Prim::Null, Prim::Null) => true,
        (Prim::Str(x), Prim::Str(y)) => match temporals(a, b, x, y) {
            Some((ta, tb)) => ta.compare(&tb) == Some(Ordering::Equal),
            None => {
                let norm = |s: &str| {
                    s.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .to_lowercase()
                };
                norm(x) == norm(y)
            }
        },
        (Prim::Bool(x), Prim::Bool(y)) => x == y,
        (Prim::Json(x), Prim::Json(y)) => x == y,
        _ => match (num(&pa), num(&pb)) {
            (Some(x), Some(y)) => {
                let scale = x.scale().min(y.scale());
                let round = |d: Decimal| {
                    d.add(&Decimal::half_ulp(scale).unwrap_or(d))
                        .and_then(|h| h.round_to(scale, false))
                };
                match (round(x), round(y)) {
                    (Some(rx), Some(ry)) => rx == ry,
                    _ => x == y,
                }
            }
            _ => false,
        },
    }
}

fn compare(a: &Item<'_>, b: &Item<'_>) -> Res<Option<Ordering>> {
    let (pa, pb) = (prim(a), prim(b));
    Ok(match (&pa, &pb) {
        (Prim::Null, _) | (_, Prim::Null) => None,
        (Prim::Str(x), Prim::Str(y)) => match temporals(a, b, x, y) {
            Some((ta, tb)) => ta.compare(&tb),
            None => Some(x.cmp(y)),
        },
        _ => match (num(&pa), num(&pb)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => {
                return Err(format!(
                    "cannot compare {} with {}",
                    a.describe(),
                    b.describe()
                ))
            }
        },
    })
}

fn arithmetic<'a>(op: BinOp, a: &Item<'a>, b: &Item<'a>) -> Res<Option<Item<'a>>> {
    let (pa, pb) = (prim(a), prim(b));
    if let (Prim::Null, _) | (_, Prim::Null) = (&pa, &pb) {
        return Ok(None);
    }
    if op == BinOp::Add {
        if let (Prim::Str(x), Prim::Str(y)) = (&pa, &pb) {
            return Ok(Some(Item::Str(Cow::Owned(format!("{x}{y}")), None)));
        }
    }
    let (Some(x), Some(y)) = (num(&pa), num(&pb)) else {
        return Err(format!(
            "operator '{}' cannot be applied to {} and {}",
            op.symbol(),
            a.describe(),
            b.describe()
        ));
    };
    if let (Prim::Int(i), Prim::Int(j)) = (&pa, &pb) {
        let r = match op {
            BinOp::Add => i.checked_add(*j),
            BinOp::Sub => i.checked_sub(*j),
            BinOp::Mul => i.checked_mul(*j),
            BinOp::IntDiv => i.checked_div(*j),
            BinOp::Mod => i.checked_rem(*j),
            _ => None,
        };
        if op != BinOp::Div {
            return Ok(r.map(Item::Int));
        }
    }
    let r = match op {
        BinOp::Add => x.add(&y),
        BinOp::Sub => x.sub(&y),
        BinOp::Mul => x.mul(&y),
        BinOp::Div => x.div(&y),
        BinOp::IntDiv => return Ok(x.div_trunc(&y).and_then(Decimal::to_i64).map(Item::Int)),
        BinOp::Mod => x.rem(&y),
        _ => None,
    };
    Ok(r.map(Item::Dec))
}

/// Whether `it` is of the type `spec` (or a subtype), for `ofType`.
fn is_type(it: &Item<'_>, spec: &TypeSpec) -> bool {
    match spec {
        TypeSpec::Resource(name) => match it {
            Item::Node { v, .. } => match v.get("resourceType").and_then(Json::as_str) {
                Some(rt) => rt == &**name || &**name == "Resource" || &**name == "DomainResource",
                None => false,
            },
            _ => false,
        },
        TypeSpec::Fhir(want) => match it.type_hint() {
            Some(actual) => fhir_is_a(actual, want),
            None => json_kind_matches(it, kind_of(want)),
        },
        TypeSpec::System(want) => match it.type_hint() {
            Some(actual) => types::system_type_of(actual) == Some(want),
            None => json_kind_matches(it, kind_of(want)),
        },
    }
}

/// `ofType` on a node whose FHIR type is not known: decided by its JSON form.
fn json_kind_matches(it: &Item<'_>, want: Kind) -> bool {
    let Item::Node { v, .. } = it else {
        return false;
    };
    match v {
        Json::Bool(_) => want == Kind::Boolean,
        Json::Number(n) => want == Kind::Decimal || (want == Kind::Integer && n.is_integer()),
        Json::String(_) => matches!(want, Kind::String | Kind::Temporal),
        // A complex value without a known type: taken to be of the asked data type, unless it is
        // a resource (resource types are matched by TypeSpec::Resource).
        Json::Object(m) => want == Kind::Complex && !m.contains_key("resourceType"),
        _ => false,
    }
}

fn call<'a>(
    func: &'a Func,
    input: &[Item<'a>],
    focus: &[Item<'a>],
    env: &Env<'a>,
    out: &mut Vec<Item<'a>>,
) -> Res<()> {
    match func {
        Func::Where(crit) => {
            let mut r = Vec::new();
            for it in input {
                r.clear();
                eval(crit, std::slice::from_ref(it), env, &mut r)?;
                if truth(&r)? == Some(true) {
                    out.push(it.clone());
                }
            }
        }
        Func::Exists(crit) => {
            let found = match crit {
                None => !input.is_empty(),
                Some(c) => {
                    let mut r = Vec::new();
                    let mut any = false;
                    for it in input {
                        r.clear();
                        eval(c, std::slice::from_ref(it), env, &mut r)?;
                        if truth(&r)? == Some(true) {
                            any = true;
                            break;
                        }
                    }
                    any
                }
            };
            out.push(Item::Bool(found));
        }
        Func::Empty => out.push(Item::Bool(input.is_empty())),
        Func::First => out.extend(input.first().cloned()),
        Func::Last => out.extend(input.last().cloned()),
        Func::Count => out.push(Item::Int(i64::try_from(input.len()).unwrap_or(i64::MAX))),
        Func::Not => {
            if let Some(b) = truth(input)? {
                out.push(Item::Bool(!b));
            }
        }
        Func::Join(sep) => {
            let sep = match sep {
                None => String::new(),
                Some(e) => {
                    let mut r = Vec::new();
                    eval(e, focus, env, &mut r)?;
                    match r.as_slice() {
                        [] => String::new(),
                        [one] => string_of(Some(one))?,
                        _ => return Err("the separator of join() must be a single string".into()),
                    }
                }
            };
            let mut s = String::new();
            for (i, it) in input.iter().enumerate() {
                if i > 0 {
                    s.push_str(&sep);
                }
                s.push_str(&string_of(Some(it))?);
            }
            out.push(Item::Str(Cow::Owned(s), None));
        }
        Func::OfType(spec) => {
            for it in input {
                if is_type(it, spec) {
                    out.push(typed(it, spec));
                }
            }
        }
        Func::Is(spec) | Func::As(spec) => {
            let it = match input {
                [] => return Ok(()),
                [one] => one,
                _ => {
                    return Err(format!(
                        "'{}' needs a single value but got a collection of {} items",
                        if matches!(func, Func::Is(_)) {
                            "is"
                        } else {
                            "as"
                        },
                        input.len()
                    ))
                }
            };
            let yes = is_type(it, spec);
            if matches!(func, Func::Is(_)) {
                out.push(Item::Bool(yes));
            } else if yes {
                out.push(typed(it, spec));
            }
        }
        Func::Extension(url) => {
            let mut r = Vec::new();
            eval(url, focus, env, &mut r)?;
            let url = match r.as_slice() {
                [] => return Ok(()),
                [one] => string_of(Some(one))?,
                _ => return Err("the argument of extension() must be a single string".into()),
            };
            for it in input {
                let holder = match it {
                    Item::Node { v, ext, .. } => {
                        if v.is_object() {
                            Some(*v)
                        } else {
                            *ext
                        }
                    }
                    _ => None,
                };
                let Some(exts) = holder
                    .and_then(|h| h.get("extension"))
                    .and_then(Json::as_array)
                else {
                    continue;
                };
                for x in exts {
                    if x.get("url").and_then(Json::as_str) == Some(url.as_str()) {
                        out.push(Item::Node {
                            v: x,
                            ty: Some("Extension"),
                            ext: None,
                        });
                    }
                }
            }
        }
        Func::ResourceKey => {
            for it in input {
                if let Item::Node { v, .. } = it {
                    if v.get("resourceType").is_some() {
                        if let Some(id) = v.get("id").filter(|id| id.is_string()) {
                            out.push(Item::Node {
                                v: id,
                                ty: Some("id"),
                                ext: None,
                            });
                        }
                    }
                }
            }
        }
        Func::ReferenceKey(want) => {
            for it in input {
                let Item::Node { v, .. } = it else { continue };
                let Some(reference) = v.get("reference").and_then(Json::as_str) else {
                    continue;
                };
                if let Some((ty, id)) = reference_key(reference) {
                    if want.as_deref().is_none_or(|w| w == ty) {
                        out.push(Item::Str(Cow::Borrowed(id), Some("id")));
                    }
                }
            }
        }
        Func::Iif(c, a, e) => {
            let mut r = Vec::new();
            eval(c, input, env, &mut r)?;
            if truth(&r)? == Some(true) {
                eval(a, input, env, out)?;
            } else if let Some(e) = e {
                eval(e, input, env, out)?;
            }
        }
        Func::Select(e) => {
            for it in input {
                eval(e, std::slice::from_ref(it), env, out)?;
            }
        }
        Func::All(c) => {
            let mut r = Vec::new();
            let mut all = true;
            for it in input {
                r.clear();
                eval(c, std::slice::from_ref(it), env, &mut r)?;
                if truth(&r)? != Some(true) {
                    all = false;
                    break;
                }
            }
            out.push(Item::Bool(all));
        }
        Func::Distinct => {
            let start = out.len();
            for it in input {
                if !out[start..].iter().any(|o| equal(o, it) == Some(true)) {
                    out.push(it.clone());
                }
            }
        }
        Func::Single => {
            if input.len() > 1 {
                return Err(format!(
                    "single() got a collection of {} items",
                    input.len()
                ));
            }
            out.extend_from_slice(input);
        }
        Func::Tail => out.extend(input.iter().skip(1).cloned()),
        Func::Skip(n) | Func::Take(n) => {
            let Some(n) = int_arg(n, focus, env)? else {
                return Ok(());
            };
            let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
            if matches!(func, Func::Skip(_)) {
                out.extend(input.iter().skip(n).cloned());
            } else {
                out.extend(input.iter().take(n).cloned());
            }
        }
        Func::HasValue => {
            let has = match input {
                [one] => !matches!(prim(one), Prim::Null | Prim::Json(_)),
                _ => false,
            };
            out.push(Item::Bool(has));
        }
        Func::Str(f) => {
            let it = match input {
                [] => return Ok(()),
                [one] => one,
                _ => {
                    return Err(format!(
                        "a string function needs a single value but got a collection of {} items",
                        input.len()
                    ))
                }
            };
            if let StrFn::ToString = f {
                if let Prim::Json(_) | Prim::Null = prim(it) {
                    return Ok(());
                }
                out.push(Item::Str(Cow::Owned(string_of(Some(it))?), None));
                return Ok(());
            }
            let Prim::Str(s) = prim(it) else {
                return Err(format!("{} is not a string", it.describe()));
            };
            let owned = |t: String| Item::Str(Cow::Owned(t), None);
            match f {
                StrFn::ToString => {}
                StrFn::Lower => out.push(owned(s.to_lowercase())),
                StrFn::Upper => out.push(owned(s.to_uppercase())),
                StrFn::Trim => out.push(owned(s.trim().to_string())),
                StrFn::Length => out.push(Item::Int(
                    i64::try_from(s.chars().count()).unwrap_or(i64::MAX),
                )),
                StrFn::Substring(start, len) => {
                    let Some(start) = int_arg(start, focus, env)? else {
                        return Ok(());
                    };
                    let count = s.chars().count();
                    let Some(start) = usize::try_from(start).ok().filter(|st| *st < count) else {
                        return Ok(());
                    };
                    let len = match len {
                        None => count,
                        Some(l) => match int_arg(l, focus, env)? {
                            None => count,
                            Some(l) => usize::try_from(l.max(0)).unwrap_or(usize::MAX),
                        },
                    };
                    out.push(owned(s.chars().skip(start).take(len).collect()));
                }
                StrFn::StartsWith(a) | StrFn::EndsWith(a) | StrFn::Contains(a) => {
                    let Some(a) = str_arg(a, focus, env)? else {
                        return Ok(());
                    };
                    out.push(Item::Bool(match f {
                        StrFn::StartsWith(_) => s.starts_with(a.as_str()),
                        StrFn::EndsWith(_) => s.ends_with(a.as_str()),
                        _ => s.contains(a.as_str()),
                    }));
                }
                StrFn::Replace(a, b) => {
                    let (Some(a), Some(b)) = (str_arg(a, focus, env)?, str_arg(b, focus, env)?)
                    else {
                        return Ok(());
                    };
                    out.push(owned(s.replace(a.as_str(), &b)));
                }
            }
        }
        Func::LowBoundary(p) | Func::HighBoundary(p) => {
            let precision = match p {
                None => None,
                Some(e) => {
                    let mut r = Vec::new();
                    eval(e, focus, env, &mut r)?;
                    match r.as_slice() {
                        [] => return Ok(()),
                        [one] => match prim(one) {
                            Prim::Int(i) => Some(i),
                            _ => return Err("a boundary precision must be an integer".into()),
                        },
                        _ => return Err("a boundary precision must be a single integer".into()),
                    }
                }
            };
            let high = matches!(func, Func::HighBoundary(_));
            for it in input {
                // A Period's boundaries are those of its start and end.
                if let Item::Node {
                    v: Json::Object(m),
                    ty: Some("Period"),
                    ..
                } = it
                {
                    let key = if high { "end" } else { "start" };
                    if let Some(s) = m.get(key).and_then(Json::as_str) {
                        let input = boundary::Input::Text(s, Some("dateTime"));
                        out.extend(boundary::boundary(input, precision, high));
                    }
                    continue;
                }
                let value = match prim(it) {
                    Prim::Str(s) => boundary::Input::Text(s, it.type_hint()),
                    Prim::Int(i) => boundary::Input::Decimal(Decimal::from_i64(i)),
                    Prim::Dec(d) => boundary::Input::Decimal(d),
                    _ => continue,
                };
                if let Some(b) = boundary::boundary(value, precision, high) {
                    out.push(b);
                }
            }
        }
    }
    Ok(())
}

/// A function argument that must be a single integer (`None` when empty).
fn int_arg<'a>(e: &'a Expr, focus: &[Item<'a>], env: &Env<'a>) -> Res<Option<i64>> {
    let mut r = Vec::new();
    eval(e, focus, env, &mut r)?;
    match r.as_slice() {
        [] => Ok(None),
        [one] => match prim(one) {
            Prim::Int(i) => Ok(Some(i)),
            _ => Err(format!("expected an integer, got {}", one.describe())),
        },
        _ => Err("expected a single integer".to_string()),
    }
}

/// A function argument that must be a single string (`None` when empty).
fn str_arg<'a>(e: &'a Expr, focus: &[Item<'a>], env: &Env<'a>) -> Res<Option<String>> {
    let mut r = Vec::new();
    eval(e, focus, env, &mut r)?;
    match r.as_slice() {
        [] => Ok(None),
        [one] => match prim(one) {
            Prim::Str(s) => Ok(Some(s.to_string())),
            _ => Err(format!("expected a string, got {}", one.describe())),
        },
        _ => Err("expected a single string".to_string()),
    }
}

/// `it` after `ofType`/`as`: a node whose own type was not known takes the type asked for.
fn typed<'a>(it: &Item<'a>, spec: &TypeSpec) -> Item<'a> {
    match (it, spec) {
        (Item::Node { v, ty: None, ext }, TypeSpec::Fhir(t)) => Item::Node {
            v,
            ty: Some(t),
            ext: *ext,
        },
        _ => it.clone(),
    }
}

/// The type and id of a literal reference: `Patient/123`, `Patient/123/_history/2`, or an
/// absolute URL ending in either. `None` for contained (`#x`), `urn:` and malformed references.
pub(crate) fn reference_key(reference: &str) -> Option<(&str, &str)> {
    let r = reference.split(['?', '#']).next().unwrap_or("");
    if r.is_empty() || r.starts_with("urn:") {
        return None;
    }
    // From the end: id and type, or version, `_history`, id and type.
    let mut segs = r.trim_end_matches('/').rsplit('/');
    let (mut id, mut ty) = (segs.next()?, segs.next()?);
    if ty == "_history" {
        (id, ty) = (segs.next()?, segs.next()?);
    }
    let type_ok = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.bytes().all(|b| b.is_ascii_alphanumeric());
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (type_ok && id_ok).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::reference_key;

    #[test]
    fn reference_keys() {
        assert_eq!(reference_key("Patient/p1"), Some(("Patient", "p1")));
        assert_eq!(
            reference_key("http://example.org/fhir/Patient/p1"),
            Some(("Patient", "p1"))
        );
        assert_eq!(
            reference_key("Patient/p1/_history/3"),
            Some(("Patient", "p1"))
        );
        assert_eq!(
            reference_key("https://x.org/base/Observation/o-1/_history/2"),
            Some(("Observation", "o-1"))
        );
        assert_eq!(reference_key("#contained"), None);
        assert_eq!(reference_key("urn:uuid:53fefa32"), None);
        assert_eq!(reference_key("p1"), None);
        assert_eq!(reference_key("patient/p1"), None);
        assert_eq!(reference_key("Patient/"), None);
    }
}
