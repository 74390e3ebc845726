//! Which elements an expression can read: the member names it navigates, or that it may read
//! the whole of its input (`$this`, `%resource`, a function applied to the focus that can give
//! the focus back). [`crate::Projection`] keeps only the top-level elements views read.

use std::collections::BTreeSet;

use super::{Expr, Func, StrFn, Var};

/// The member names an expression navigates, anywhere in it.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    pub(crate) names: BTreeSet<Box<str>>,
    /// The expression may give or compare its focus itself (then every element counts).
    pub(crate) whole: bool,
}

impl Reads {
    pub(crate) fn add(&mut self, expr: &Expr) {
        match expr {
            Expr::Empty | Expr::Bool(_) | Expr::Str(..) | Expr::Int(_) | Expr::Dec(_) => {}
            Expr::TypeFilter(_) | Expr::Var(Var::RowIndex | Var::Constant(_)) => {}
            Expr::This | Expr::Var(Var::Resource | Var::Context) => self.whole = true,
            Expr::Path(base, steps) => {
                self.add_opt(base.as_deref());
                self.names.extend(steps.iter().map(|s| s.name.clone()));
            }
            Expr::Call(base, func) => {
                match base {
                    Some(b) => self.add(b),
                    // Applied to the focus: only functions that cannot give the focus back.
                    None if !gives_scalar(func) => self.whole = true,
                    None => {}
                }
                self.add_func(func);
            }
            Expr::Index(a, b) | Expr::Bin(_, a, b) => {
                self.add(a);
                self.add(b);
            }
            Expr::Neg(a) => self.add(a),
        }
    }

    fn add_opt(&mut self, expr: Option<&Expr>) {
        if let Some(e) = expr {
            self.add(e);
        }
    }

    fn add_func(&mut self, func: &Func) {
        match func {
            Func::Where(e) | Func::Select(e) | Func::All(e) | Func::Skip(e) | Func::Take(e) => {
                self.add(e)
            }
            Func::Extension(e) => {
                self.names.insert("extension".into());
                self.add(e);
            }
            Func::Exists(e) | Func::Join(e) | Func::LowBoundary(e) | Func::HighBoundary(e) => {
                self.add_opt(e.as_deref())
            }
            Func::Iif(c, t, f) => {
                self.add(c);
                self.add(t);
                self.add_opt(f.as_deref());
            }
            Func::Str(s) => match s {
                StrFn::Substring(a, b) => {
                    self.add(a);
                    self.add_opt(b.as_deref());
                }
                StrFn::StartsWith(a) | StrFn::EndsWith(a) | StrFn::Contains(a) => self.add(a),
                StrFn::Replace(a, b) => {
                    self.add(a);
                    self.add(b);
                }
                StrFn::ToString | StrFn::Lower | StrFn::Upper | StrFn::Trim | StrFn::Length => {}
            },
            Func::Empty
            | Func::First
            | Func::Last
            | Func::Count
            | Func::Not
            | Func::OfType(_)
            | Func::Is(_)
            | Func::As(_)
            | Func::ResourceKey
            | Func::ReferenceKey(_)
            | Func::Distinct
            | Func::Single
            | Func::Tail
            | Func::HasValue => {}
        }
    }
}

/// Functions whose result is never their input item itself (a boolean, a count, a key, a
/// string, or members reached by name).
fn gives_scalar(func: &Func) -> bool {
    matches!(
        func,
        Func::Exists(_)
            | Func::Empty
            | Func::Count
            | Func::Not
            | Func::HasValue
            | Func::Is(_)
            | Func::ResourceKey
            | Func::ReferenceKey(_)
            | Func::Extension(_)
            | Func::Str(_)
    )
}
