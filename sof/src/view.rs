//! Reading (and validating) a ViewDefinition, and producing its rows for a resource.

use serde_json::{Map, Value};

use crate::fhirpath::eval::{eval, Constant, Env, Item};
use crate::fhirpath::reads::Reads;
use crate::fhirpath::{compile, may_repeat, Expr, Scope, Var};
use crate::json::Json;
use crate::model;
use crate::types::{self, kind_of, Kind};
use crate::{EvalError, ViewError};

/// A column of the view's output, in output order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    name: String,
    declared_type: Option<String>,
    inferred_type: Option<&'static str>,
    collection: bool,
    element: String,
    description: Option<String>,
    tags: Vec<(String, String)>,
}

impl Column {
    /// The column name (`^[A-Za-z][A-Za-z0-9_]*$`, unique in the view).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `type` the ViewDefinition declares, as written (a FHIR type name, a StructureDefinition
    /// URL or an element path such as `Observation.referenceRange`).
    pub fn declared_type(&self) -> Option<&str> {
        self.declared_type.as_deref()
    }

    /// The FHIR type the path gives, when it is a single one: element paths by the R4 model
    /// (`name.family` → `string`, `contact` → `Patient.contact`), literals, `ofType(X)`,
    /// boolean-valued operators and functions, `join`, `%rowIndex`, the key functions. `None`
    /// when several types are possible (a choice element such as `value`) or the type is not
    /// known.
    pub fn inferred_type(&self) -> Option<&'static str> {
        self.inferred_type
    }

    /// The declared type, else the inferred one.
    pub fn fhir_type(&self) -> Option<&str> {
        self.declared_type.as_deref().or(self.inferred_type)
    }

    /// Whether the column holds a collection (a JSON array per row) rather than one value.
    pub fn collection(&self) -> bool {
        self.collection
    }

    /// Where the column is defined in the ViewDefinition (`select[1].column[0]`).
    pub fn element(&self) -> &str {
        &self.element
    }

    /// The column's `description`.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The column's tags as (name, value), in order: for example `("ansi/type", "DATE")`, the
    /// specification's database type hint.
    pub fn tags(&self) -> &[(String, String)] {
        &self.tags
    }

    /// The value of the first tag named `name`.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct ColumnExpr {
    expr: Expr,
    collection: bool,
    element: String,
}

#[derive(Debug)]
enum Iteration {
    None,
    ForEach(Expr),
    ForEachOrNull(Expr),
    Repeat(Vec<Expr>),
}

#[derive(Debug)]
struct Select {
    element: String,
    iteration: Iteration,
    columns: Vec<ColumnExpr>,
    selects: Vec<Select>,
    union_all: Vec<Select>,
    /// The row of a `forEachOrNull` over nothing: nulls, and 0 for `%rowIndex` columns.
    null_row: Vec<Value>,
}

impl Select {
    fn add_reads(&self, reads: &mut Reads) {
        match &self.iteration {
            Iteration::None => {}
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => reads.add(e),
            Iteration::Repeat(es) => es.iter().for_each(|e| reads.add(e)),
        }
        for c in &self.columns {
            reads.add(&c.expr);
        }
        for s in self.selects.iter().chain(&self.union_all) {
            s.add_reads(reads);
        }
    }
}

/// A validated ViewDefinition, ready to produce rows.
#[derive(Debug)]
pub struct View {
    resource: String,
    name: Option<String>,
    constants: Vec<Constant>,
    wheres: Vec<(String, Expr)>,
    root: Select,
    columns: Vec<Column>,
    warnings: Vec<ViewError>,
}

/// The name a ViewDefinition is known by in the specification; [`View`] is its compiled form.
pub type ViewDefinition = View;

fn err(element: impl Into<String>, message: impl Into<String>) -> ViewError {
    ViewError::new(element.into(), message.into())
}

fn is_sql_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Element paths are joined with a dot unless the parent is the root.
fn at(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

const CONSTANT_TYPES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "integer64",
    "oid",
    "string",
    "positiveInt",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
];

const RESERVED_CONSTANTS: &[&str] = &[
    "resource",
    "rootResource",
    "context",
    "rowIndex",
    "ucum",
    "sct",
    "loinc",
];

fn check_keys(obj: &Map<String, Value>, element: &str, allowed: &[&str]) -> Result<(), ViewError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(err(
                at(element, k),
                format!("unknown element '{k}' (allowed: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn array<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    element: &str,
) -> Result<&'v [Value], ViewError> {
    match obj.get(key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(err(at(element, key), "must be an array")),
    }
}

fn object<'v>(v: &'v Value, element: &str) -> Result<&'v Map<String, Value>, ViewError> {
    v.as_object()
        .ok_or_else(|| err(element, "must be an object"))
}

fn string<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    element: &str,
) -> Result<Option<&'v str>, ViewError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(at(element, key), "must be a string")),
    }
}

/// The FHIR types the focus of an expression may have (`None`: not known).
type Types = Option<Vec<&'static str>>;

struct Builder<'s> {
    scope: Scope<'s>,
    is_resource_type: &'s dyn Fn(&str) -> bool,
    /// Every column in output order.
    columns: Vec<Column>,
    warnings: Vec<ViewError>,
}

/// A compiled expression: the AST, its statically known type and the types the model gives.
struct Typed {
    expr: Expr,
    ty: Option<&'static str>,
    types: Types,
}

impl Builder<'_> {
    fn expr(&mut self, text: &str, element: &str, ctx: &Types) -> Result<Typed, ViewError> {
        let c = compile(text, &self.scope, ctx.as_deref()).map_err(|m| err(element, m))?;
        for w in c.warnings {
            self.warnings.push(err(element, w));
        }
        Ok(Typed {
            expr: c.expr,
            ty: c.ty,
            types: c.types,
        })
    }

    fn expr_at(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        element: &str,
        ctx: &Types,
    ) -> Result<Option<Typed>, ViewError> {
        match string(obj, key, element)? {
            None => Ok(None),
            Some(text) => Ok(Some(self.expr(text, &at(element, key), ctx)?)),
        }
    }

    /// The `repeat` paths and the types of the nodes they reach: applied to the focus and again
    /// to whatever they reach, until no new type turns up.
    fn repeat(
        &mut self,
        r: &Value,
        element: &str,
        ctx: &Types,
    ) -> Result<(Vec<Expr>, Types), ViewError> {
        let el = at(element, "repeat");
        let paths = r
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| err(&el, "must be a non-empty array of FHIRPath strings"))?;
        let mut texts = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let pel = format!("{el}[{i}]");
            let text = p.as_str().ok_or_else(|| err(&pel, "must be a string"))?;
            texts.push((pel, text));
        }
        let mut reached: Types = Some(Vec::new());
        for _ in 0..32 {
            let (Some(base), Some(mut seen)) = (ctx.clone(), reached.clone()) else {
                reached = None;
                break;
            };
            let mut all = base;
            all.extend(seen.iter().copied());
            let before = seen.len();
            for (pel, text) in &texts {
                let c = compile(text, &self.scope, Some(&all)).map_err(|m| err(pel, m))?;
                match c.types {
                    Some(ts) => {
                        for t in ts {
                            if !seen.contains(&t) {
                                seen.push(t);
                            }
                        }
                    }
                    None => return self.repeat_exprs(&texts, None).map(|e| (e, None)),
                }
            }
            let grown = seen.len() > before;
            reached = Some(seen);
            if !grown {
                break;
            }
        }
        let all = match (ctx, &reached) {
            (Some(c), Some(r)) => Some(c.iter().chain(r).copied().collect()),
            _ => None,
        };
        let exprs = self.repeat_exprs(&texts, all)?;
        Ok((exprs, reached))
    }

    fn repeat_exprs(
        &mut self,
        texts: &[(String, &str)],
        all: Types,
    ) -> Result<Vec<Expr>, ViewError> {
        let mut exprs = Vec::new();
        for (pel, text) in texts {
            exprs.push(self.expr(text, pel, &all)?.expr);
        }
        Ok(exprs)
    }

    /// Reads a selection structure whose focus has the types `ctx`; its columns are appended to
    /// `self.columns` in output order (own columns, nested selects, then the first unionAll
    /// branch).
    fn select(&mut self, v: &Value, element: &str, ctx: &Types) -> Result<Select, ViewError> {
        let obj = object(v, element)?;
        check_keys(
            obj,
            element,
            &[
                "column",
                "select",
                "forEach",
                "forEachOrNull",
                "repeat",
                "unionAll",
                "id",
                "extension",
                "modifierExtension",
            ],
        )?;
        let iterations = ["forEach", "forEachOrNull", "repeat"]
            .iter()
            .filter(|k| obj.contains_key(**k))
            .count();
        if iterations > 1 {
            return Err(err(
                element,
                "only one of forEach, forEachOrNull and repeat may be given",
            ));
        }
        let (iteration, item_ctx) = if let Some(t) = self.expr_at(obj, "forEach", element, ctx)? {
            (Iteration::ForEach(t.expr), t.types)
        } else if let Some(t) = self.expr_at(obj, "forEachOrNull", element, ctx)? {
            (Iteration::ForEachOrNull(t.expr), t.types)
        } else if let Some(r) = obj.get("repeat") {
            let (exprs, reached) = self.repeat(r, element, ctx)?;
            (Iteration::Repeat(exprs), reached)
        } else {
            (Iteration::None, ctx.clone())
        };
        let ctx = &item_ctx;

        let mut columns = Vec::new();
        for (i, c) in array(obj, "column", element)?.iter().enumerate() {
            columns.push(self.column(c, &format!("{}[{i}]", at(element, "column")), ctx)?);
        }
        let mut selects = Vec::new();
        for (i, s) in array(obj, "select", element)?.iter().enumerate() {
            selects.push(self.select(s, &format!("{}[{i}]", at(element, "select")), ctx)?);
        }
        let mut union_all = Vec::new();
        let branches = array(obj, "unionAll", element)?;
        if obj.contains_key("unionAll") && branches.is_empty() {
            return Err(err(at(element, "unionAll"), "must not be empty"));
        }
        let mut first_branch: Option<Vec<Column>> = None;
        for (i, s) in branches.iter().enumerate() {
            let el = format!("{}[{i}]", at(element, "unionAll"));
            let start = self.columns.len();
            union_all.push(self.select(s, &el, ctx)?);
            let cols: Vec<Column> = self.columns.drain(start..).collect();
            match &first_branch {
                None => first_branch = Some(cols),
                Some(first) => {
                    let names = |cs: &[Column]| {
                        cs.iter()
                            .map(|c| c.name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    if names(first) != names(&cols) {
                        return Err(err(
                            el,
                            format!(
                                "unionAll branches must have the same columns in the same order: \
                                 ({}) here, ({}) in unionAll[0]",
                                names(&cols),
                                names(first)
                            ),
                        ));
                    }
                    for (a, b) in first.iter().zip(&cols) {
                        // Declared types must be equal; an inferred one need only fit (a code
                        // and a string are both text).
                        if let (Some(x), Some(y)) = (a.fhir_type(), b.fhir_type()) {
                            let both_declared =
                                a.declared_type.is_some() && b.declared_type.is_some();
                            if x != y && (both_declared || !compatible(x, y) && !compatible(y, x)) {
                                return Err(err(
                                    format!("{}.type", b.element),
                                    format!(
                                        "column '{}' is {y} here but {x} in unionAll[0]",
                                        b.name
                                    ),
                                ));
                            }
                        }
                        if a.collection != b.collection {
                            return Err(err(
                                format!("{}.collection", b.element),
                                format!(
                                    "column '{}' differs in 'collection' from unionAll[0]",
                                    b.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(cols) = first_branch {
            for c in cols {
                self.add_column(c)?;
            }
        }
        let mut s = Select {
            element: element.to_string(),
            iteration,
            columns,
            selects,
            union_all,
            null_row: Vec::new(),
        };
        s.null_row = null_row_of(&s);
        Ok(s)
    }

    fn add_column(&mut self, c: Column) -> Result<(), ViewError> {
        if let Some(prev) = self.columns.iter().find(|p| p.name == c.name) {
            return Err(err(
                format!("{}.name", c.element),
                format!(
                    "column name '{}' is already used by {}",
                    c.name, prev.element
                ),
            ));
        }
        self.columns.push(c);
        Ok(())
    }

    fn column(&mut self, v: &Value, element: &str, ctx: &Types) -> Result<ColumnExpr, ViewError> {
        let obj = object(v, element)?;
        check_keys(
            obj,
            element,
            &[
                "name",
                "path",
                "description",
                "collection",
                "type",
                "tag",
                "id",
                "extension",
                "modifierExtension",
            ],
        )?;
        let name =
            string(obj, "name", element)?.ok_or_else(|| err(at(element, "name"), "is required"))?;
        if !is_sql_name(name) {
            return Err(err(
                at(element, "name"),
                format!("'{name}' is not a valid column name (^[A-Za-z][A-Za-z0-9_]*$)"),
            ));
        }
        let path_el = at(element, "path");
        let text = string(obj, "path", element)?.ok_or_else(|| err(&path_el, "is required"))?;
        let Typed { expr, ty, types } = self.expr(text, &path_el, ctx)?;
        // A single type from the model (element paths), else the one known without it.
        let inferred = match types.as_deref() {
            Some([one]) => Some(*one),
            _ => ty,
        };
        let collection = match obj.get("collection") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err(at(element, "collection"), "must be a boolean")),
        };
        if !collection && may_repeat(&expr) {
            self.warnings.push(err(
                &path_el,
                "an element on this path repeats, so it may give several values, but the column \
                 is not a collection: a resource that gives several fails (set \"collection\": \
                 true, or take one with first() or an indexer)",
            ));
        }
        let description = string(obj, "description", element)?.map(str::to_string);
        let mut tags = Vec::new();
        for (i, t) in array(obj, "tag", element)?.iter().enumerate() {
            let el = format!("{}[{i}]", at(element, "tag"));
            let t = object(t, &el)?;
            check_keys(t, &el, &["name", "value", "id", "extension"])?;
            let n = string(t, "name", &el)?.ok_or_else(|| err(at(&el, "name"), "is required"))?;
            let v = string(t, "value", &el)?.ok_or_else(|| err(at(&el, "value"), "is required"))?;
            tags.push((n.to_string(), v.to_string()));
        }
        let declared = string(obj, "type", element)?;
        if let Some(t) = declared {
            let type_el = at(element, "type");
            let base = self
                .declared_type_base(t)
                .ok_or_else(|| err(&type_el, format!("unknown type '{t}'")))?;
            if let (Some(d), Some(i)) = (base, inferred) {
                if !compatible(d, i) {
                    return Err(err(
                        type_el,
                        format!("the path gives {i}, which does not fit the declared type {t}"),
                    ));
                }
            }
        }
        let c = Column {
            name: name.to_string(),
            declared_type: declared.map(str::to_string),
            inferred_type: inferred,
            collection,
            element: element.to_string(),
            description,
            tags,
        };
        self.add_column(c)?;
        Ok(ColumnExpr {
            expr,
            collection,
            element: path_el,
        })
    }

    /// Checks a column `type`; `Some(Some(t))` for a data type, `Some(None)` for an accepted type
    /// that is not a data type (a resource or backbone element), `None` when unknown.
    fn declared_type_base(&self, t: &str) -> Option<Option<&'static str>> {
        let name = t
            .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
            .unwrap_or(t);
        if let Some(dt) = types::data_type(name) {
            return Some(Some(dt));
        }
        let head = name.split('.').next().unwrap_or(name);
        let rest_ok = name
            .split('.')
            .skip(1)
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
        if rest_ok && ((self.is_resource_type)(head) || types::data_type(head).is_some()) {
            return Some(None);
        }
        None
    }
}

/// Whether a value of statically known type `inferred` fits a column declared as `declared`.
fn compatible(declared: &str, inferred: &str) -> bool {
    let (d, i) = (kind_of(declared), kind_of(inferred));
    d == i
        || (d == Kind::Decimal && i == Kind::Integer)
        || (matches!(d, Kind::String | Kind::Temporal)
            && matches!(i, Kind::String | Kind::Temporal))
}

/// The null row of a select: `null` everywhere except `%rowIndex` columns, which are 0.
fn null_row_of(s: &Select) -> Vec<Value> {
    let mut row = Vec::new();
    fn fill(s: &Select, row: &mut Vec<Value>) {
        for c in &s.columns {
            row.push(if matches!(c.expr, Expr::Var(Var::RowIndex)) {
                Value::from(0)
            } else {
                Value::Null
            });
        }
        for child in &s.selects {
            fill(child, row);
        }
        if let Some(first) = s.union_all.first() {
            fill(first, row);
        }
    }
    fill(s, &mut row);
    row
}

impl View {
    /// Reads and validates a ViewDefinition (R4 resource types). Everything that can be checked
    /// without data is checked here: structure and JSON types of every element, column and
    /// constant names (format, duplicates), `unionAll` branch columns, constants, and every
    /// FHIRPath expression (syntax, unknown functions and constants, arity, argument and
    /// operand types as far as literals, functions and the R4 model make them known, `where`
    /// paths that cannot be boolean). Probable mistakes that are not errors are in
    /// [`View::warnings`].
    pub fn from_json(json: &Value) -> Result<View, ViewError> {
        View::from_json_with(json, &types::is_r4_resource_type)
    }

    /// As [`View::from_json`], with the caller's check of resource type names.
    pub fn from_json_with(
        json: &Value,
        is_resource_type: &dyn Fn(&str) -> bool,
    ) -> Result<View, ViewError> {
        let obj = json
            .as_object()
            .ok_or_else(|| err("", "a ViewDefinition must be a JSON object"))?;
        if let Some(rt) = obj.get("resourceType") {
            if rt.as_str() != Some("ViewDefinition") {
                return Err(err("resourceType", "must be 'ViewDefinition'"));
            }
        }
        let resource =
            string(obj, "resource", "")?.ok_or_else(|| err("resource", "is required"))?;
        if !is_resource_type(resource) {
            return Err(err(
                "resource",
                format!("'{resource}' is not a resource type"),
            ));
        }
        let name = string(obj, "name", "")?;
        if let Some(n) = name {
            if !is_sql_name(n) {
                return Err(err(
                    "name",
                    format!("'{n}' is not a valid view name (^[A-Za-z][A-Za-z0-9_]*$)"),
                ));
            }
        }
        if let Some(s) = obj.get("status") {
            if !matches!(s.as_str(), Some("draft" | "active" | "retired" | "unknown")) {
                return Err(err(
                    "status",
                    "must be one of draft, active, retired, unknown",
                ));
            }
        }

        let mut constant_names: Vec<(String, &'static str)> = Vec::new();
        let mut constants = Vec::new();
        for (i, c) in array(obj, "constant", "")?.iter().enumerate() {
            let el = format!("constant[{i}]");
            let (cname, ty, value) = constant(c, &el)?;
            if constant_names.iter().any(|(n, _)| *n == cname) {
                return Err(err(
                    at(&el, "name"),
                    format!("constant '{cname}' is defined twice"),
                ));
            }
            constant_names.push((cname, ty));
            constants.push(Constant {
                value: Json::from(&value).into_owned(),
                ty,
            });
        }

        let model_resource = model::type_name(resource);
        let mut b = Builder {
            scope: Scope {
                resource: model_resource,
                constants: &constant_names,
                is_resource_type,
            },
            is_resource_type,
            columns: Vec::new(),
            warnings: Vec::new(),
        };
        // The focus at the top is the resource; its types are known when the model has it.
        let root_ctx: Types = model_resource.map(|r| vec![r]);

        let mut wheres = Vec::new();
        for (i, w) in array(obj, "where", "")?.iter().enumerate() {
            let el = format!("where[{i}]");
            let wo = object(w, &el)?;
            check_keys(wo, &el, &["path", "description", "id", "extension"])?;
            string(wo, "description", &el)?;
            let path_el = at(&el, "path");
            let text = string(wo, "path", &el)?.ok_or_else(|| err(&path_el, "is required"))?;
            let Typed { expr, ty, types } = b.expr(text, &path_el, &root_ctx)?;
            let types = types.or_else(|| ty.map(|t| vec![t])).unwrap_or_default();
            if !types.is_empty() && types.iter().all(|t| kind_of(t) != Kind::Boolean) {
                return Err(err(
                    path_el,
                    format!(
                        "a where path must give a boolean, this one gives {}",
                        types.join(" or ")
                    ),
                ));
            }
            wheres.push((path_el, expr));
        }

        let selects = array(obj, "select", "")?;
        if selects.is_empty() {
            return Err(err("select", "at least one select is required"));
        }
        let mut root_selects = Vec::new();
        for (i, s) in selects.iter().enumerate() {
            root_selects.push(b.select(s, &format!("select[{i}]"), &root_ctx)?);
        }
        let root = Select {
            element: String::new(),
            iteration: Iteration::None,
            columns: Vec::new(),
            selects: root_selects,
            union_all: Vec::new(),
            null_row: Vec::new(),
        };
        let columns = b.columns;
        let warnings = b.warnings;
        if columns.is_empty() {
            return Err(err("select", "the view defines no column"));
        }
        Ok(View {
            resource: resource.to_string(),
            name: name.map(str::to_string),
            constants,
            wheres,
            root,
            columns,
            warnings,
        })
    }

    /// Adds what the view's expressions read to `reads` (see [`crate::Projection`]).
    pub(crate) fn add_reads(&self, reads: &mut Reads) {
        for (_, w) in &self.wheres {
            reads.add(w);
        }
        self.root.add_reads(reads);
    }

    /// The resource type the view reads (`resource`).
    pub fn resource_type(&self) -> &str {
        &self.resource
    }

    /// The view's `name`, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Probable mistakes that FHIRPath does not treat as errors, each with its element: a path
    /// through an element that does not exist in FHIR R4 (`name.famly`), an `ofType` that can
    /// never match. Such a path gives nothing (the column is null). A server may refuse the
    /// view on them or report them as warnings.
    pub fn warnings(&self) -> &[ViewError] {
        &self.warnings
    }

    /// The output columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The rows `resource` gives, each with one value per column (`null` for none, a JSON array
    /// for a `collection` column). A resource of another type, or one the `where` paths reject,
    /// gives no rows.
    pub fn rows(&self, resource: &Value) -> Result<Vec<Vec<Value>>, EvalError> {
        self.json_rows(&Json::from(resource))
    }

    /// [`View::rows`] for a resource read with [`Json::parse`] or
    /// [`crate::Projection::parse`].
    pub fn json_rows(&self, resource: &Json<'_>) -> Result<Vec<Vec<Value>>, EvalError> {
        let mut flat = Vec::new();
        self.append_json_rows(resource, &mut flat)?;
        let width = self.columns.len();
        if width == 0 {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(flat.len() / width);
        let mut it = flat.into_iter();
        loop {
            let row: Vec<Value> = it.by_ref().take(width).collect();
            if row.is_empty() {
                break;
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// Appends the rows of `resource` to `out`, flattened (row after row, `columns().len()`
    /// values each), and returns how many rows were added. Reusing `out` across resources
    /// avoids an allocation per row. On error, `out` is left as it was.
    pub fn append_rows(&self, resource: &Value, out: &mut Vec<Value>) -> Result<usize, EvalError> {
        self.append_json_rows(&Json::from(resource), out)
    }

    /// [`View::append_rows`] for a resource read with [`Json::parse`] or
    /// [`crate::Projection::parse`] (the cheaper form to read resources into).
    pub fn append_json_rows(
        &self,
        resource: &Json<'_>,
        out: &mut Vec<Value>,
    ) -> Result<usize, EvalError> {
        if resource.get("resourceType").and_then(Json::as_str) != Some(self.resource.as_str()) {
            return Ok(0);
        }
        let env = Env {
            resource,
            constants: &self.constants,
            row_index: 0,
        };
        let root = [Item::node(resource)];
        let mut r = Vec::new();
        for (element, w) in &self.wheres {
            r.clear();
            eval(w, &root, &env, &mut r).map_err(|m| EvalError::new(element.clone(), m))?;
            let keep = match r.as_slice() {
                [] => false,
                [one] => match one {
                    Item::Bool(b) => *b,
                    Item::Node {
                        v: Json::Bool(b), ..
                    } => *b,
                    other => {
                        return Err(EvalError::new(
                            element.clone(),
                            format!(
                                "a where path must give a boolean, this one gave {}",
                                describe(other)
                            ),
                        ))
                    }
                },
                _ => {
                    return Err(EvalError::new(
                        element.clone(),
                        format!(
                            "a where path must give a single boolean, this one gave {} values",
                            r.len()
                        ),
                    ))
                }
            };
            if !keep {
                return Ok(0);
            }
        }
        let start = out.len();
        match self.process(&self.root, &root[0], 0, &env, out) {
            Ok(n) => Ok(n),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    fn process<'a>(
        &'a self,
        s: &'a Select,
        node: &Item<'a>,
        row_index: i64,
        env: &Env<'a>,
        out: &mut Vec<Value>,
    ) -> Result<usize, EvalError> {
        let eval_err = |m: String| {
            let what = match &s.iteration {
                Iteration::ForEach(_) => "forEach",
                Iteration::ForEachOrNull(_) => "forEachOrNull",
                Iteration::Repeat(_) => "repeat",
                Iteration::None => "",
            };
            EvalError::new(at(&s.element, what), m)
        };
        let focus = std::slice::from_ref(node);
        match &s.iteration {
            Iteration::None => self.one(s, node, row_index, env, out),
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => {
                let mut items = Vec::new();
                eval(e, focus, env, &mut items).map_err(eval_err)?;
                if items.is_empty() && matches!(s.iteration, Iteration::ForEachOrNull(_)) {
                    out.extend_from_slice(&s.null_row);
                    return Ok(1);
                }
                let mut n = 0;
                for (i, it) in items.iter().enumerate() {
                    n += self.one(s, it, index(i), env, out)?;
                }
                Ok(n)
            }
            Iteration::Repeat(paths) => {
                let mut items = Vec::new();
                repeat(paths, node, env, &mut items, 0).map_err(eval_err)?;
                let mut n = 0;
                for (i, it) in items.iter().enumerate() {
                    n += self.one(s, it, index(i), env, out)?;
                }
                Ok(n)
            }
        }
    }

    /// The rows of one focus of a select: the cross product of its own columns, each nested
    /// select's rows and its unionAll's rows.
    fn one<'a>(
        &'a self,
        s: &'a Select,
        f: &Item<'a>,
        row_index: i64,
        env: &Env<'a>,
        out: &mut Vec<Value>,
    ) -> Result<usize, EvalError> {
        let env = Env { row_index, ..*env };
        let focus = std::slice::from_ref(f);
        let simple = s.selects.is_empty() && s.union_all.is_empty();
        // Without nested selects the row goes straight to `out` (the caller truncates `out` on
        // an error); otherwise the own columns are repeated for every combination below.
        let mut own_buf = Vec::new();
        let own: &mut Vec<Value> = if simple {
            &mut *out
        } else {
            own_buf.reserve(s.columns.len());
            &mut own_buf
        };
        let mut items = Vec::new();
        for c in &s.columns {
            items.clear();
            eval(&c.expr, focus, &env, &mut items)
                .map_err(|m| EvalError::new(c.element.clone(), m))?;
            own.push(if c.collection {
                Value::Array(items.iter().map(Item::to_json).collect())
            } else {
                match items.as_slice() {
                    [] => Value::Null,
                    [one] => one.to_json(),
                    _ => {
                        return Err(EvalError::new(
                            c.element.clone(),
                            format!(
                                "gave {} values for a column that is not a collection \
                                 (set \"collection\": true to keep them all)",
                                items.len()
                            ),
                        ))
                    }
                }
            });
        }
        if simple {
            return Ok(1);
        }
        let own = own_buf;
        // Each part: (flattened rows, width, row count).
        let mut parts: Vec<(Vec<Value>, usize, usize)> = Vec::with_capacity(s.selects.len() + 1);
        for child in &s.selects {
            let mut rows = Vec::new();
            let n = self.process(child, f, row_index, &env, &mut rows)?;
            if n == 0 {
                return Ok(0);
            }
            parts.push((rows, child.null_row.len(), n));
        }
        if let Some(first) = s.union_all.first() {
            let mut rows = Vec::new();
            let mut n = 0;
            for u in &s.union_all {
                n += self.process(u, f, row_index, &env, &mut rows)?;
            }
            if n == 0 {
                return Ok(0);
            }
            parts.push((rows, first.null_row.len(), n));
        }
        // Odometer over the parts' rows; the first part varies slowest.
        let mut pos = vec![0usize; parts.len()];
        let mut produced = 0;
        loop {
            out.extend_from_slice(&own);
            for ((rows, w, _), p) in parts.iter().zip(&pos) {
                out.extend_from_slice(&rows[p * w..(p + 1) * w]);
            }
            produced += 1;
            let mut k = parts.len();
            loop {
                if k == 0 {
                    return Ok(produced);
                }
                k -= 1;
                pos[k] += 1;
                if pos[k] < parts[k].2 {
                    break;
                }
                pos[k] = 0;
            }
        }
    }
}

fn index(i: usize) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

/// Depth-first traversal of `repeat`: every node reached by following the paths from `node`, in
/// pre-order (the node itself is not included).
fn repeat<'a>(
    paths: &'a [Expr],
    node: &Item<'a>,
    env: &Env<'a>,
    out: &mut Vec<Item<'a>>,
    depth: usize,
) -> Result<(), String> {
    // JSON nesting is bounded by the parser (serde_json: 128 levels); guard anyway.
    if depth > 1000 {
        return Err("repeat went deeper than 1000 levels".to_string());
    }
    for p in paths {
        let mut children = Vec::new();
        eval(p, std::slice::from_ref(node), env, &mut children)?;
        for c in children {
            out.push(c.clone());
            repeat(paths, &c, env, out, depth + 1)?;
        }
    }
    Ok(())
}

fn describe(it: &Item<'_>) -> String {
    match it.to_json() {
        Value::String(s) => format!("the string '{s}'"),
        Value::Number(n) => format!("the number {n}"),
        Value::Object(_) => "an object".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

/// Reads a constant: name, FHIR type and value.
fn constant(c: &Value, element: &str) -> Result<(String, &'static str, Value), ViewError> {
    let obj = object(c, element)?;
    let name =
        string(obj, "name", element)?.ok_or_else(|| err(at(element, "name"), "is required"))?;
    if !is_sql_name(name) {
        return Err(err(
            at(element, "name"),
            format!("'{name}' is not a valid constant name (^[A-Za-z][A-Za-z0-9_]*$)"),
        ));
    }
    if RESERVED_CONSTANTS.contains(&name) {
        return Err(err(
            at(element, "name"),
            format!("'%{name}' is a predefined variable and cannot be a constant name"),
        ));
    }
    let mut found: Option<(&'static str, &Value, String)> = None;
    for (k, v) in obj {
        match k.as_str() {
            "name" | "id" | "extension" => continue,
            _ => {}
        }
        let ty = k
            .strip_prefix("value")
            .and_then(types::choice_suffix_type)
            .filter(|t| CONSTANT_TYPES.contains(t))
            .ok_or_else(|| {
                err(
                    at(element, k),
                    format!("unknown element '{k}' (a constant has name and one value[x] of a primitive type)"),
                )
            })?;
        if found.is_some() {
            return Err(err(at(element, k), "a constant has exactly one value[x]"));
        }
        found = Some((ty, v, k.clone()));
    }
    let (ty, value, key) = found.ok_or_else(|| {
        err(
            at(element, "value[x]"),
            format!("constant '{name}' has no value (valueString, valueInteger, …)"),
        )
    })?;
    let el = at(element, &key);
    let ok = match kind_of(ty) {
        Kind::Boolean => value.is_boolean(),
        Kind::Integer if ty == "integer64" => value.is_string() || value.is_i64(),
        Kind::Integer => {
            let n = value.as_i64();
            n.is_some_and(|n| match ty {
                "positiveInt" => n > 0,
                "unsignedInt" => n >= 0,
                _ => i32::try_from(n).is_ok(),
            })
        }
        Kind::Decimal => value.is_number(),
        _ => value.as_str().is_some_and(|s| !s.is_empty()),
    };
    if !ok {
        return Err(err(el, format!("is not a valid {ty}")));
    }
    // integer64 is a JSON string in FHIR; evaluate it as an integer.
    let value = match (ty, value) {
        ("integer64", Value::String(s)) => s
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| err(at(element, &key), "is not a valid integer64"))?,
        _ => value.clone(),
    };
    Ok((name.to_string(), ty, value))
}

#[cfg(test)]
mod tests;
