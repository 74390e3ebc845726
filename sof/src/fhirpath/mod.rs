//! The FHIRPath subset SQL on FHIR v2 needs: a parser to an AST (once, when a ViewDefinition is
//! read), static checks of what can be known without a FHIR structure model, and an evaluator
//! over `serde_json::Value` resources (in [`eval`]).
//!
//! Supported: member navigation (choice elements `value` → `valueQuantity` included), indexers,
//! `$this`, literals (string, integer, decimal, boolean, `{}`, `@date`, `@dateTime`, `@Thh:mm`),
//! external constants (the view's `%name`, `%resource`, `%rootResource`, `%context`,
//! `%rowIndex`, `%ucum`, `%sct`, `%loinc`), unary minus, the operators `and`, `or`, `xor`,
//! `implies`, `=`, `!=`, `~`, `!~`, `in`, `contains`, `<`, `>`, `<=`, `>=`, `|`, `+`, `-`, `*`,
//! `/`, `div`, `mod`, `&`, `is`, `as`, and
//! the functions `where`, `exists`, `empty`, `first`, `last`, `count`, `not`, `join`, `ofType`,
//! `is`, `as`, `extension`, `getResourceKey`, `getReferenceKey`, `lowBoundary` and
//! `highBoundary` (also on Period); and also `iif`, `select`, `all`, `distinct`, `single`,
//! `tail`, `skip`, `take`, `hasValue`, `toString`, `lower`, `upper`, `trim`, `length`,
//! `substring`, `startsWith`, `endsWith`, `contains` and `replace`.
//! Anything else is refused when the expression is parsed.

mod boundary;
pub(crate) mod eval;
mod lex;
pub(crate) mod reads;
mod temporal;

use crate::decimal::Decimal;
use crate::model;
use crate::types::{self, kind_of, Kind, TypeSpec};
use lex::{Tok, Token};

/// A member navigation step: the element name and the name of its primitive-extension sibling
/// (`_name`), prepared once.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) name: Box<str>,
    pub(crate) ext_name: Box<str>,
    /// The element's FHIR type when the R4 model gives a single one (set by the model check);
    /// the items the step reaches carry it.
    pub(crate) ty: Option<&'static str>,
    /// Whether the R4 model says the element repeats (set by the model check).
    pub(crate) many: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    Resource,
    Context,
    RowIndex,
    Constant(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    And,
    Or,
    Xor,
    Implies,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    Lt,
    Gt,
    Le,
    Ge,
    Union,
    Add,
    Sub,
    Concat,
    Mul,
    Div,
    IntDiv,
    Mod,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Xor => "xor",
            BinOp::Implies => "implies",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Equiv => "~",
            BinOp::NotEquiv => "!~",
            BinOp::In => "in",
            BinOp::Contains => "contains",
            BinOp::Lt => "<",
            BinOp::Gt => ">",
            BinOp::Le => "<=",
            BinOp::Ge => ">=",
            BinOp::Union => "|",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Concat => "&",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::IntDiv => "div",
            BinOp::Mod => "mod",
        }
    }
}

#[derive(Debug)]
pub(crate) enum Func {
    Where(Box<Expr>),
    Exists(Option<Box<Expr>>),
    Empty,
    First,
    Last,
    Count,
    Not,
    Join(Option<Box<Expr>>),
    OfType(TypeSpec),
    /// `is T` / `is(T)`: whether the single input item is a T.
    Is(TypeSpec),
    /// `as T` / `as(T)`: the single input item if it is a T.
    As(TypeSpec),
    Extension(Box<Expr>),
    ResourceKey,
    ReferenceKey(Option<Box<str>>),
    LowBoundary(Option<Box<Expr>>),
    HighBoundary(Option<Box<Expr>>),
    Iif(Box<Expr>, Box<Expr>, Option<Box<Expr>>),
    Select(Box<Expr>),
    All(Box<Expr>),
    Distinct,
    Single,
    Tail,
    Skip(Box<Expr>),
    Take(Box<Expr>),
    HasValue,
    /// String functions on a single input item.
    Str(StrFn),
}

#[derive(Debug)]
pub(crate) enum StrFn {
    ToString,
    Lower,
    Upper,
    Trim,
    Length,
    Substring(Box<Expr>, Option<Box<Expr>>),
    StartsWith(Box<Expr>),
    EndsWith(Box<Expr>),
    Contains(Box<Expr>),
    Replace(Box<Expr>, Box<Expr>),
}

#[derive(Debug)]
pub(crate) enum Expr {
    Empty,
    Bool(bool),
    /// A string literal, or a date/time literal with its type (`date`, `dateTime`, `time`).
    Str(Box<str>, Option<&'static str>),
    Int(i64),
    Dec(Decimal),
    This,
    Var(Var),
    /// A leading resource type name (`Patient.name`): keeps the resources of that type.
    TypeFilter(Box<str>),
    /// Member navigation from `base` (or from the focus when `None`).
    Path(Option<Box<Expr>>, Vec<Step>),
    /// A function applied to `base` (or to the focus when `None`).
    Call(Option<Box<Expr>>, Func),
    Index(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
}

/// What an expression may refer to: the view's constants and the resource type names.
pub(crate) struct Scope<'s> {
    /// The view's resource type, if the model knows it (`%resource`).
    pub(crate) resource: Option<&'static str>,
    /// Constant names and their FHIR types, in declaration order (`Var::Constant` indexes it).
    pub(crate) constants: &'s [(String, &'static str)],
    pub(crate) is_resource_type: &'s dyn Fn(&str) -> bool,
}

/// A parsed and checked expression with its statically known FHIR/System type, if any.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) expr: Expr,
    pub(crate) ty: Option<&'static str>,
    /// The FHIR types the expression can give according to the R4 model (`None`: not known).
    pub(crate) types: Option<Vec<&'static str>>,
    /// Things that are probably mistakes but not errors in FHIRPath (an element that does not
    /// exist gives an empty result).
    pub(crate) warnings: Vec<String>,
}

/// Parses and checks `text`. The error is a message for a person (the caller adds which element
/// of the ViewDefinition held the expression).
pub(crate) fn compile(
    text: &str,
    scope: &Scope<'_>,
    context: Option<&[&'static str]>,
) -> Result<Compiled, String> {
    let tokens = lex::lex(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        scope,
        depth: 0,
    };
    let mut expr = p.expr(0)?;
    let tok = p.peek();
    if tok.tok != Tok::End {
        return Err(format!(
            "unexpected {} at position {} in FHIRPath",
            tok.tok.describe(),
            tok.pos + 1
        ));
    }
    let ty = check(&expr, scope)?;
    let mut m = ModelCheck {
        sc: scope,
        warnings: Vec::new(),
    };
    let ctx = context.map(<[&'static str]>::to_vec);
    let types = match ty {
        Some(t) => m.types(&mut expr, &ctx)?.or_else(|| Some(vec![t])),
        None => m.types(&mut expr, &ctx)?,
    };
    Ok(Compiled {
        expr,
        ty,
        types,
        warnings: m.warnings,
    })
}

type Types = Option<Vec<&'static str>>;

/// Whether `e`, evaluated on a single focus item, may give more than one item according to the
/// R4 model (after the model check has marked the path steps). Unknown elements count as single,
/// so that only what the model makes likely is reported.
pub(crate) fn may_repeat(e: &Expr) -> bool {
    match e {
        Expr::Path(base, steps) => {
            base.as_deref().is_some_and(may_repeat) || steps.iter().any(|s| s.many)
        }
        Expr::Bin(BinOp::Union, _, _) => true,
        Expr::Call(base, func) => {
            let base_many = base.as_deref().is_some_and(may_repeat);
            match func {
                Func::Where(_)
                | Func::OfType(_)
                | Func::As(_)
                | Func::Distinct
                | Func::Tail
                | Func::Skip(_)
                | Func::Take(_)
                | Func::ReferenceKey(_)
                | Func::LowBoundary(_)
                | Func::HighBoundary(_) => base_many,
                Func::Select(x) => base_many || may_repeat(x),
                Func::Iif(_, a, b) => may_repeat(a) || b.as_deref().is_some_and(may_repeat),
                _ => false,
            }
        }
        _ => false,
    }
}

fn one_type(t: &Types) -> Option<&'static str> {
    match t.as_deref() {
        Some([one]) => Some(one),
        _ => None,
    }
}

fn push_unique(v: &mut Vec<&'static str>, t: &'static str) {
    if !v.contains(&t) {
        v.push(t);
    }
}

/// Types of expressions from the R4 model, and the errors they make certain: operands that
/// cannot fit, string functions on what is not a string, `getReferenceKey` on something that is
/// not a Reference; warnings for what is probably a mistake (an element that does not exist, an
/// `ofType` that never matches, a criterion that is not boolean).
struct ModelCheck<'a, 's> {
    sc: &'a Scope<'s>,
    warnings: Vec<String>,
}

impl ModelCheck<'_, '_> {
    fn types(&mut self, e: &mut Expr, ctx: &Types) -> Result<Types, String> {
        Ok(match e {
            Expr::Empty => None,
            Expr::Bool(_) => Some(vec!["boolean"]),
            Expr::Str(_, ty) => Some(vec![ty.unwrap_or("string")]),
            Expr::Int(_) => Some(vec!["integer"]),
            Expr::Dec(_) => Some(vec!["decimal"]),
            Expr::This | Expr::Var(Var::Context) => ctx.clone(),
            Expr::Var(Var::Resource) => self.sc.resource.map(|r| vec![r]),
            Expr::Var(Var::RowIndex) => Some(vec!["integer"]),
            Expr::Var(Var::Constant(i)) => self.sc.constants.get(*i).map(|(_, t)| vec![*t]),
            Expr::TypeFilter(name) => model::type_name(name).map(|t| vec![t]),
            Expr::Path(base, steps) => {
                let mut cur = match base {
                    Some(b) => self.types(b, ctx)?,
                    None => ctx.clone(),
                };
                for st in steps.iter_mut() {
                    let (next, many) = self.step(cur, &st.name);
                    cur = next;
                    st.many = many;
                    st.ty = match cur.as_deref() {
                        Some([one]) if !one.contains('.') => Some(*one),
                        _ => None,
                    };
                }
                cur
            }
            Expr::Index(base, idx) => {
                self.types(idx, ctx)?;
                self.types(base, ctx)?
            }
            Expr::Neg(inner) => self.types(inner, ctx)?,
            Expr::Bin(op, l, r) => {
                let lt = self.types(l, ctx)?;
                let rt = self.types(r, ctx)?;
                match op {
                    BinOp::Union => match (lt, rt) {
                        (Some(mut a), Some(b)) => {
                            for t in b {
                                push_unique(&mut a, t);
                            }
                            Some(a)
                        }
                        _ => None,
                    },
                    _ => check_binary(*op, one_type(&lt), one_type(&rt))?.map(|t| vec![t]),
                }
            }
            Expr::Call(base, func) => {
                let b = match base {
                    Some(b) => self.types(b, ctx)?,
                    None => ctx.clone(),
                };
                self.func(func, b, ctx)?
            }
        })
    }

    /// Member navigation by the model: the types reached and whether the element repeats.
    fn step(&mut self, cur: Types, name: &str) -> (Types, bool) {
        let Some(ts) = cur else {
            return (None, false);
        };
        let mut out = Vec::new();
        let mut many = false;
        for t in &ts {
            match model::child(t, name) {
                model::Lookup::Found(found, repeats) => {
                    many |= repeats;
                    for f in found {
                        push_unique(&mut out, f);
                    }
                }
                model::Lookup::Missing => {}
                model::Lookup::Unknown => return (None, false),
            }
        }
        if out.is_empty() && !ts.is_empty() {
            self.warnings.push(format!(
                "{} has no element '{name}' in FHIR R4: the path gives nothing",
                ts.join(" or ")
            ));
        }
        (Some(out), many)
    }

    fn criterion(&mut self, func: &str, c: &mut Expr, items: &Types) -> Result<(), String> {
        let t = self.types(c, items)?;
        // FHIRPath takes a single non-boolean value as true, so this is only probably a mistake.
        if let Some(ts) = t {
            if !ts.is_empty() && ts.iter().all(|t| kind_of(t) != Kind::Boolean) {
                self.warnings.push(format!(
                    "the argument of {func}() is {}, not a Boolean: a single value counts as true",
                    ts.join(" or ")
                ));
            }
        }
        Ok(())
    }

    fn func(&mut self, func: &mut Func, b: Types, ctx: &Types) -> Result<Types, String> {
        Ok(match func {
            Func::Where(c) => {
                self.criterion("where", c, &b)?;
                b
            }
            Func::Exists(c) => {
                if let Some(c) = c {
                    self.criterion("exists", c, &b)?;
                }
                Some(vec!["boolean"])
            }
            Func::Empty | Func::Not => Some(vec!["boolean"]),
            Func::First | Func::Last => b,
            Func::Count => Some(vec!["integer"]),
            Func::Join(sep) => {
                if let Some(sep) = sep {
                    self.types(sep, ctx)?;
                }
                Some(vec!["string"])
            }
            Func::Is(_) => Some(vec!["boolean"]),
            Func::OfType(spec) | Func::As(spec) => {
                let spec: &TypeSpec = spec;
                let want = match spec {
                    TypeSpec::Resource(r) => model::type_name(r),
                    other => type_spec_name(other),
                };
                if let (Some(ts), TypeSpec::Fhir(w)) = (&b, spec) {
                    if !ts.is_empty() && !ts.iter().any(|t| types::fhir_is_a(t, w)) {
                        self.warnings.push(format!(
                            "ofType({w}) never matches here (the value is {}): the path gives nothing",
                            ts.join(" or ")
                        ));
                    }
                }
                want.map(|w| vec![w])
            }
            Func::Extension(url) => {
                self.types(url, ctx)?;
                Some(vec!["Extension"])
            }
            Func::ResourceKey => Some(vec!["id"]),
            Func::ReferenceKey(_) => {
                if let Some(ts) = &b {
                    if !ts.is_empty() && !ts.contains(&"Reference") {
                        return Err(format!(
                            "getReferenceKey() applies to a Reference, not {}",
                            ts.join(" or ")
                        ));
                    }
                }
                Some(vec!["id"])
            }
            Func::Iif(c, a, e) => {
                self.criterion("iif", c, &b)?;
                let at = self.types(a, &b)?;
                let et = match e {
                    Some(e) => self.types(e, &b)?,
                    None => at.clone(),
                };
                if at == et {
                    at
                } else {
                    None
                }
            }
            Func::Select(e) => self.types(e, &b)?,
            Func::All(c) => {
                self.criterion("all", c, &b)?;
                Some(vec!["boolean"])
            }
            Func::Distinct | Func::Single | Func::Tail => b,
            Func::Skip(n) | Func::Take(n) => {
                self.types(n, ctx)?;
                b
            }
            Func::HasValue => Some(vec!["boolean"]),
            Func::Str(f) => {
                if let Some(t) = one_type(&b) {
                    if !matches!(f, StrFn::ToString) && !stringish(kind_of(t)) {
                        return Err(format!("string functions apply to strings, not {t}"));
                    }
                }
                match f {
                    StrFn::Substring(x, y) => {
                        self.types(x, ctx)?;
                        if let Some(y) = y {
                            self.types(y, ctx)?;
                        }
                    }
                    StrFn::StartsWith(x) | StrFn::EndsWith(x) | StrFn::Contains(x) => {
                        self.types(x, ctx)?;
                    }
                    StrFn::Replace(x, y) => {
                        self.types(x, ctx)?;
                        self.types(y, ctx)?;
                    }
                    _ => {}
                }
                Some(vec![match f {
                    StrFn::Length => "integer",
                    StrFn::StartsWith(_) | StrFn::EndsWith(_) | StrFn::Contains(_) => "boolean",
                    _ => "string",
                }])
            }
            Func::LowBoundary(p) | Func::HighBoundary(p) => {
                if let Some(p) = p {
                    self.types(p, ctx)?;
                }
                match one_type(&b).map(kind_of) {
                    Some(Kind::Integer | Kind::Decimal) => Some(vec!["decimal"]),
                    Some(Kind::Temporal) => b,
                    Some(Kind::Complex) if one_type(&b) == Some("Period") => Some(vec!["dateTime"]),
                    _ => None,
                }
            }
        })
    }
}

struct Parser<'s, 'e> {
    tokens: Vec<Token>,
    pos: usize,
    scope: &'s Scope<'e>,
    /// Nesting depth (parentheses, arguments, unary operators), limited so that a hostile
    /// expression cannot exhaust the stack.
    depth: usize,
}

const MAX_DEPTH: usize = 64;

fn binop_of(tok: &Tok) -> Option<(BinOp, u8)> {
    Some(match tok {
        Tok::Ident(s) => match s.as_str() {
            "implies" => (BinOp::Implies, 1),
            "or" => (BinOp::Or, 2),
            "xor" => (BinOp::Xor, 2),
            "and" => (BinOp::And, 3),
            "in" => (BinOp::In, 4),
            "contains" => (BinOp::Contains, 4),
            "div" => (BinOp::IntDiv, 10),
            "mod" => (BinOp::Mod, 10),
            _ => return None,
        },
        Tok::Sym(s) => match *s {
            "=" => (BinOp::Eq, 5),
            "!=" => (BinOp::Ne, 5),
            "~" => (BinOp::Equiv, 5),
            "!~" => (BinOp::NotEquiv, 5),
            "<" => (BinOp::Lt, 6),
            ">" => (BinOp::Gt, 6),
            "<=" => (BinOp::Le, 6),
            ">=" => (BinOp::Ge, 6),
            "|" => (BinOp::Union, 7),
            "+" => (BinOp::Add, 9),
            "-" => (BinOp::Sub, 9),
            "&" => (BinOp::Concat, 9),
            "*" => (BinOp::Mul, 10),
            "/" => (BinOp::Div, 10),
            _ => return None,
        },
        _ => return None,
    })
}

/// Precedence of `is` and `as` (between `|` and the additive operators).
const TYPE_OP_PREC: u8 = 8;

impl Parser<'_, '_> {
    fn peek(&self) -> &Token {
        // The lexer always ends the list with Tok::End.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn at_sym(&self, s: &str) -> bool {
        matches!(&self.peek().tok, Tok::Sym(x) if *x == s)
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), String> {
        if self.at_sym(s) {
            self.next();
            Ok(())
        } else {
            let t = self.peek();
            Err(format!(
                "expected '{s}' but found {} at position {} in FHIRPath",
                t.tok.describe(),
                t.pos + 1
            ))
        }
    }

    fn expr(&mut self, min_prec: u8) -> Result<Expr, String> {
        let mut lhs = self.unary()?;
        loop {
            let tok = self.peek();
            if let Tok::Ident(word) = &tok.tok {
                if (word == "is" || word == "as") && TYPE_OP_PREC >= min_prec {
                    let is = word == "is";
                    self.next();
                    let spec = self.type_spec()?;
                    let func = if is { Func::Is(spec) } else { Func::As(spec) };
                    lhs = Expr::Call(Some(Box::new(lhs)), func);
                    continue;
                }
            }
            let Some((op, prec)) = binop_of(&tok.tok) else {
                break;
            };
            if prec < min_prec {
                break;
            }
            self.next();
            let rhs = self.expr(prec + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "the expression is nested more than {MAX_DEPTH} levels deep"
            ));
        }
        let r = self.unary_inner();
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self) -> Result<Expr, String> {
        if self.at_sym("-") {
            self.next();
            let e = self.unary()?;
            return Ok(match e {
                Expr::Int(i) => Expr::Int(-i),
                Expr::Dec(d) => Expr::Dec(d.neg()),
                e => Expr::Neg(Box::new(e)),
            });
        }
        if self.at_sym("+") {
            self.next();
            return self.unary();
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.term()?;
        loop {
            if self.at_sym(".") {
                self.next();
                let t = self.next();
                let name = match t.tok {
                    Tok::Ident(s) | Tok::Delimited(s) => s,
                    other => {
                        return Err(format!(
                            "expected a name after '.' but found {} at position {}",
                            other.describe(),
                            t.pos + 1
                        ))
                    }
                };
                e = self.invocation(Some(e), name, t.pos)?;
            } else if self.at_sym("[") {
                self.next();
                let idx = self.expr(0)?;
                self.expect_sym("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        let t = self.next();
        match t.tok {
            Tok::Str(s) => Ok(Expr::Str(s.into(), None)),
            Tok::Num(text) => {
                if text.contains('.') {
                    Decimal::parse(&text)
                        .map(Expr::Dec)
                        .ok_or_else(|| format!("decimal literal {text} is out of range"))
                } else {
                    text.parse::<i64>()
                        .map(Expr::Int)
                        .map_err(|_| format!("integer literal {text} is out of range"))
                }
            }
            Tok::Temporal(text, ty) => Ok(Expr::Str(text.into(), Some(ty))),
            Tok::Ext(name) => self.external(&name, t.pos),
            Tok::Dollar(name) => match name.as_str() {
                "this" => Ok(Expr::This),
                _ => Err(format!(
                    "${name} at position {} is not supported",
                    t.pos + 1
                )),
            },
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Sym("{") => {
                self.expect_sym("}")?;
                Ok(Expr::Empty)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                _ => {
                    if !self.at_sym("(")
                        && name.starts_with(|c: char| c.is_ascii_uppercase())
                        && (self.scope.is_resource_type)(&name)
                    {
                        return Ok(Expr::TypeFilter(name.into()));
                    }
                    self.invocation(None, name, t.pos)
                }
            },
            Tok::Delimited(name) => self.invocation(None, name, t.pos),
            other => Err(format!(
                "unexpected {} at position {} in FHIRPath",
                other.describe(),
                t.pos + 1
            )),
        }
    }

    fn external(&self, name: &str, pos: usize) -> Result<Expr, String> {
        Ok(match name {
            "resource" | "rootResource" => Expr::Var(Var::Resource),
            "context" => Expr::Var(Var::Context),
            "rowIndex" => Expr::Var(Var::RowIndex),
            "ucum" => Expr::Str("http://unitsofmeasure.org".into(), Some("uri")),
            "sct" => Expr::Str("http://snomed.info/sct".into(), Some("uri")),
            "loinc" => Expr::Str("http://loinc.org".into(), Some("uri")),
            _ => match self.scope.constants.iter().position(|(n, _)| n == name) {
                Some(i) => Expr::Var(Var::Constant(i)),
                None => {
                    return Err(format!(
                        "%{name} at position {} is not a constant of this view",
                        pos + 1
                    ))
                }
            },
        })
    }

    /// `name` or `name(args)` applied to `base` (the focus when `None`).
    fn invocation(&mut self, base: Option<Expr>, name: String, pos: usize) -> Result<Expr, String> {
        if !self.at_sym("(") {
            return Ok(match base {
                Some(Expr::Path(b, mut steps)) => {
                    steps.push(step(name));
                    Expr::Path(b, steps)
                }
                b => Expr::Path(b.map(Box::new), vec![step(name)]),
            });
        }
        self.next();
        let func = match name.as_str() {
            "ofType" => Func::OfType(self.type_spec()?),
            "is" => Func::Is(self.type_spec()?),
            "as" => Func::As(self.type_spec()?),
            "getReferenceKey" => {
                if self.at_sym(")") {
                    Func::ReferenceKey(None)
                } else {
                    match self.type_spec()? {
                        TypeSpec::Resource(t) if &*t != "Resource" && &*t != "DomainResource" => {
                            Func::ReferenceKey(Some(t))
                        }
                        _ => {
                            return Err(format!(
                                "getReferenceKey at position {} takes a resource type",
                                pos + 1
                            ))
                        }
                    }
                }
            }
            _ => {
                let mut args = Vec::new();
                if !self.at_sym(")") {
                    loop {
                        args.push(self.expr(0)?);
                        if self.at_sym(",") {
                            self.next();
                        } else {
                            break;
                        }
                    }
                }
                func_of(&name, args, pos)?
            }
        };
        self.expect_sym(")")?;
        Ok(Expr::Call(base.map(Box::new), func))
    }

    /// A type specifier: `Quantity`, `FHIR.Quantity`, `System.String`, `Patient`.
    fn type_spec(&mut self) -> Result<TypeSpec, String> {
        let t = self.next();
        let first = match t.tok {
            Tok::Ident(s) | Tok::Delimited(s) => s,
            other => {
                return Err(format!(
                    "expected a type name but found {} at position {}",
                    other.describe(),
                    t.pos + 1
                ))
            }
        };
        let (ns, name) = if self.at_sym(".") {
            self.next();
            match self.next().tok {
                Tok::Ident(s) | Tok::Delimited(s) => (Some(first), s),
                other => {
                    return Err(format!(
                        "expected a type name after '{first}.' but found {}",
                        other.describe()
                    ))
                }
            }
        } else {
            (None, first)
        };
        resolve_type(ns.as_deref(), &name, self.scope)
            .ok_or_else(|| format!("unknown type '{name}' at position {}", t.pos + 1))
    }
}

fn step(name: String) -> Step {
    let ext_name = format!("_{name}").into_boxed_str();
    Step {
        name: name.into_boxed_str(),
        ext_name,
        ty: None,
        many: false,
    }
}

fn resolve_type(ns: Option<&str>, name: &str, scope: &Scope<'_>) -> Option<TypeSpec> {
    let system = || {
        types::SYSTEM_TYPES
            .iter()
            .find(|t| **t == name)
            .map(|t| TypeSpec::System(t))
    };
    let fhir = || {
        if let Some(t) = types::data_type(name) {
            Some(TypeSpec::Fhir(t))
        } else if name == "Resource" || name == "DomainResource" || (scope.is_resource_type)(name) {
            Some(TypeSpec::Resource(name.into()))
        } else {
            None
        }
    };
    match ns {
        Some("System") => system(),
        Some("FHIR") => fhir(),
        Some(_) => None,
        None => fhir().or_else(system),
    }
}

fn func_of(name: &str, args: Vec<Expr>, pos: usize) -> Result<Func, String> {
    let n = args.len();
    let arity = |min: usize, max: usize| -> Result<(), String> {
        if n < min || n > max {
            let want = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            Err(format!(
                "function {name}() at position {} takes {want} argument(s), got {n}",
                pos + 1
            ))
        } else {
            Ok(())
        }
    };
    let mut args = args.into_iter().map(Box::new);
    Ok(match name {
        "where" => {
            arity(1, 1)?;
            Func::Where(args.next().ok_or("missing argument")?)
        }
        "exists" => {
            arity(0, 1)?;
            Func::Exists(args.next())
        }
        "empty" => {
            arity(0, 0)?;
            Func::Empty
        }
        "first" => {
            arity(0, 0)?;
            Func::First
        }
        "last" => {
            arity(0, 0)?;
            Func::Last
        }
        "count" => {
            arity(0, 0)?;
            Func::Count
        }
        "not" => {
            arity(0, 0)?;
            Func::Not
        }
        "join" => {
            arity(0, 1)?;
            Func::Join(args.next())
        }
        "extension" => {
            arity(1, 1)?;
            Func::Extension(args.next().ok_or("missing argument")?)
        }
        "getResourceKey" => {
            arity(0, 0)?;
            Func::ResourceKey
        }
        "lowBoundary" => {
            arity(0, 1)?;
            Func::LowBoundary(args.next())
        }
        "highBoundary" => {
            arity(0, 1)?;
            Func::HighBoundary(args.next())
        }
        "iif" => {
            arity(2, 3)?;
            let c = args.next().ok_or("missing argument")?;
            let a = args.next().ok_or("missing argument")?;
            Func::Iif(c, a, args.next())
        }
        "select" => {
            arity(1, 1)?;
            Func::Select(args.next().ok_or("missing argument")?)
        }
        "all" => {
            arity(1, 1)?;
            Func::All(args.next().ok_or("missing argument")?)
        }
        "distinct" | "single" | "tail" | "hasValue" | "toString" | "lower" | "upper" | "trim"
        | "length" => {
            arity(0, 0)?;
            match name {
                "distinct" => Func::Distinct,
                "single" => Func::Single,
                "tail" => Func::Tail,
                "hasValue" => Func::HasValue,
                "toString" => Func::Str(StrFn::ToString),
                "lower" => Func::Str(StrFn::Lower),
                "upper" => Func::Str(StrFn::Upper),
                "trim" => Func::Str(StrFn::Trim),
                _ => Func::Str(StrFn::Length),
            }
        }
        "skip" | "take" | "startsWith" | "endsWith" | "contains" => {
            arity(1, 1)?;
            let a = args.next().ok_or("missing argument")?;
            match name {
                "skip" => Func::Skip(a),
                "take" => Func::Take(a),
                "startsWith" => Func::Str(StrFn::StartsWith(a)),
                "endsWith" => Func::Str(StrFn::EndsWith(a)),
                _ => Func::Str(StrFn::Contains(a)),
            }
        }
        "substring" => {
            arity(1, 2)?;
            let start = args.next().ok_or("missing argument")?;
            Func::Str(StrFn::Substring(start, args.next()))
        }
        "replace" => {
            arity(2, 2)?;
            let a = args.next().ok_or("missing argument")?;
            let b = args.next().ok_or("missing argument")?;
            Func::Str(StrFn::Replace(a, b))
        }
        _ => {
            return Err(format!(
                "unknown or unsupported function {name}() at position {}",
                pos + 1
            ))
        }
    })
}

fn type_spec_name(spec: &TypeSpec) -> Option<&'static str> {
    match spec {
        TypeSpec::Fhir(t) => Some(t),
        TypeSpec::System(t) => Some(match *t {
            "String" => "string",
            "Integer" => "integer",
            "Decimal" => "decimal",
            "Boolean" => "boolean",
            "Date" => "date",
            "DateTime" => "dateTime",
            "Time" => "time",
            _ => "Quantity",
        }),
        TypeSpec::Resource(_) => None,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Boolean => "Boolean",
        Kind::Integer => "Integer",
        Kind::Decimal => "Decimal",
        Kind::String => "String",
        Kind::Temporal => "a date/time",
        Kind::Complex => "a complex type",
    }
}

fn numeric(k: Kind) -> bool {
    matches!(k, Kind::Integer | Kind::Decimal)
}

fn stringish(k: Kind) -> bool {
    matches!(k, Kind::String | Kind::Temporal)
}

/// Static checks and the statically known type of `e` (`None`: not known without a model).
fn check(e: &Expr, sc: &Scope<'_>) -> Result<Option<&'static str>, String> {
    Ok(match e {
        Expr::Empty | Expr::This | Expr::TypeFilter(_) => None,
        Expr::Bool(_) => Some("boolean"),
        Expr::Str(_, ty) => Some(ty.unwrap_or("string")),
        Expr::Int(_) => Some("integer"),
        Expr::Dec(_) => Some("decimal"),
        Expr::Var(Var::RowIndex) => Some("integer"),
        Expr::Var(Var::Constant(i)) => sc.constants.get(*i).map(|(_, t)| *t),
        Expr::Var(_) => None,
        Expr::Path(base, _) => {
            if let Some(b) = base {
                check(b, sc)?;
            }
            None
        }
        Expr::Index(base, idx) => {
            let t = check(base, sc)?;
            if let Some(it) = check(idx, sc)? {
                if kind_of(it) != Kind::Integer {
                    return Err(format!("an index must be an Integer, not {it}"));
                }
            }
            t
        }
        Expr::Neg(inner) => {
            let t = check(inner, sc)?;
            if let Some(t) = t {
                if !numeric(kind_of(t)) {
                    return Err(format!("unary '-' cannot be applied to {t}"));
                }
            }
            t
        }
        Expr::Bin(op, l, r) => {
            let lt = check(l, sc)?;
            let rt = check(r, sc)?;
            check_binary(*op, lt, rt)?
        }
        Expr::Call(base, func) => {
            let bt = match base {
                Some(b) => check(b, sc)?,
                None => None,
            };
            check_func(func, bt, sc)?
        }
    })
}

fn check_binary(
    op: BinOp,
    lt: Option<&'static str>,
    rt: Option<&'static str>,
) -> Result<Option<&'static str>, String> {
    let lk = lt.map(kind_of);
    let rk = rt.map(kind_of);
    let mismatch = || {
        Err(format!(
            "operator '{}' cannot be applied to {} and {}",
            op.symbol(),
            lt.unwrap_or("?"),
            rt.unwrap_or("?")
        ))
    };
    Ok(match op {
        BinOp::And
        | BinOp::Or
        | BinOp::Xor
        | BinOp::Implies
        | BinOp::Eq
        | BinOp::Ne
        | BinOp::Equiv
        | BinOp::NotEquiv
        | BinOp::In
        | BinOp::Contains => Some("boolean"),
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            if let (Some(a), Some(b)) = (lk, rk) {
                let ok = (numeric(a) && numeric(b)) || (stringish(a) && stringish(b));
                if !ok {
                    return mismatch();
                }
            }
            Some("boolean")
        }
        BinOp::Union => {
            if lt == rt {
                lt
            } else {
                None
            }
        }
        BinOp::Concat => Some("string"),
        BinOp::Add => match (lk, rk) {
            (Some(a), Some(b)) if numeric(a) && numeric(b) => {
                Some(if a == Kind::Integer && b == Kind::Integer {
                    "integer"
                } else {
                    "decimal"
                })
            }
            (Some(Kind::String), Some(Kind::String)) => Some("string"),
            (Some(_), Some(_)) => return mismatch(),
            (Some(k), None) | (None, Some(k)) if !(numeric(k) || k == Kind::String) => {
                return mismatch()
            }
            _ => None,
        },
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod => {
            if lk.is_some_and(|k| !numeric(k)) || rk.is_some_and(|k| !numeric(k)) {
                return mismatch();
            }
            match (lk, rk) {
                _ if op == BinOp::Div => Some("decimal").filter(|_| lk.is_some() && rk.is_some()),
                (Some(Kind::Integer), Some(Kind::Integer)) => Some("integer"),
                (Some(_), Some(_)) => Some("decimal"),
                _ => None,
            }
        }
    })
}

fn expect_arg(
    sc: &Scope<'_>,
    func: &str,
    arg: &Expr,
    want: Kind,
    want_name: &str,
) -> Result<Option<&'static str>, String> {
    let t = check(arg, sc)?;
    if let Some(t) = t {
        let k = kind_of(t);
        let ok = k == want || (want == Kind::String && k == Kind::Temporal);
        if !ok {
            return Err(format!(
                "the argument of {func}() must be {want_name}, not {}",
                kind_name(k)
            ));
        }
    }
    Ok(t)
}

fn check_func(
    func: &Func,
    base: Option<&'static str>,
    sc: &Scope<'_>,
) -> Result<Option<&'static str>, String> {
    Ok(match func {
        Func::Where(c) => {
            expect_arg(sc, "where", c, Kind::Boolean, "a Boolean")?;
            base
        }
        Func::Exists(c) => {
            if let Some(c) = c {
                expect_arg(sc, "exists", c, Kind::Boolean, "a Boolean")?;
            }
            Some("boolean")
        }
        Func::Empty | Func::Not => Some("boolean"),
        Func::First | Func::Last => base,
        Func::Count => Some("integer"),
        Func::Join(sep) => {
            if let Some(sep) = sep {
                expect_arg(sc, "join", sep, Kind::String, "a String")?;
            }
            Some("string")
        }
        Func::OfType(spec) | Func::As(spec) => type_spec_name(spec),
        Func::Is(_) => Some("boolean"),
        Func::Extension(url) => {
            expect_arg(sc, "extension", url, Kind::String, "a String")?;
            Some("Extension")
        }
        Func::ResourceKey | Func::ReferenceKey(_) => Some("id"),
        Func::Iif(c, a, b) => {
            expect_arg(sc, "iif", c, Kind::Boolean, "a Boolean")?;
            let at = check(a, sc)?;
            let bt = match b {
                Some(b) => check(b, sc)?,
                None => at,
            };
            if at == bt {
                at
            } else {
                None
            }
        }
        Func::Select(e) => {
            check(e, sc)?;
            None
        }
        Func::All(c) => {
            expect_arg(sc, "all", c, Kind::Boolean, "a Boolean")?;
            Some("boolean")
        }
        Func::Distinct | Func::Single | Func::Tail => base,
        Func::Skip(n) | Func::Take(n) => {
            expect_arg(sc, "skip/take", n, Kind::Integer, "an Integer")?;
            base
        }
        Func::HasValue => Some("boolean"),
        Func::Str(f) => {
            if let Some(k) = base.map(kind_of) {
                if !matches!(f, StrFn::ToString) && !stringish(k) {
                    return Err(format!(
                        "string functions apply to strings, not {}",
                        kind_name(k)
                    ));
                }
            }
            match f {
                StrFn::ToString | StrFn::Lower | StrFn::Upper | StrFn::Trim => Some("string"),
                StrFn::Length => Some("integer"),
                StrFn::Substring(a, b) => {
                    expect_arg(sc, "substring", a, Kind::Integer, "an Integer")?;
                    if let Some(b) = b {
                        expect_arg(sc, "substring", b, Kind::Integer, "an Integer")?;
                    }
                    Some("string")
                }
                StrFn::StartsWith(a) | StrFn::EndsWith(a) | StrFn::Contains(a) => {
                    expect_arg(
                        sc,
                        "startsWith/endsWith/contains",
                        a,
                        Kind::String,
                        "a String",
                    )?;
                    Some("boolean")
                }
                StrFn::Replace(a, b) => {
                    expect_arg(sc, "replace", a, Kind::String, "a String")?;
                    expect_arg(sc, "replace", b, Kind::String, "a String")?;
                    Some("string")
                }
            }
        }
        Func::LowBoundary(p) | Func::HighBoundary(p) => {
            let name = if matches!(func, Func::LowBoundary(_)) {
                "lowBoundary"
            } else {
                "highBoundary"
            };
            if let Some(p) = p {
                expect_arg(sc, name, p, Kind::Integer, "an Integer")?;
            }
            match base.map(kind_of) {
                Some(Kind::Integer | Kind::Decimal) => Some("decimal"),
                Some(Kind::Temporal) => base,
                Some(Kind::Complex) if base == Some("Period") => Some("dateTime"),
                Some(k) => {
                    return Err(format!(
                        "{name}() applies to decimals, dates and times, not {}",
                        kind_name(k)
                    ))
                }
                None => None,
            }
        }
    })
}

#[cfg(test)]
mod tests;
