//! SQL on FHIR v2 `$viewdefinition-export`: its kick-off parameters, read into the parameters of
//! an export job whose files hold the rows of ViewDefinitions (evaluated by the `sof` crate)
//! instead of resources. Everything else (authorization, status, manifest, files, retention) is
//! the job machinery of `$export`.

use serde_json::Value;

use crate::export::params::{
    self, ExportParams, KickoffError, NamedView, ViewFormat, MAX_STORED_PARAMS_BYTES,
};
use crate::export::ExportLevel;
use crate::fhir::resource_types::is_resource_type;

/// The resource type of a stored ViewDefinition (SQL on FHIR's logical resource: `bulk-export
/// load` stores it beside the R4 data; it is never exported).
pub const VIEW_DEFINITION: &str = "ViewDefinition";

/// Stored ViewDefinitions by id, for `viewReference`.
pub type StoredViews = std::collections::HashMap<String, Value>;

/// Views one job may hold.
pub const MAX_VIEWS: usize = 50;
/// The stored ViewDefinitions of one job, serialised, at most.
pub const MAX_VIEWS_BYTES: usize = 4 * MAX_STORED_PARAMS_BYTES;

/// A `$viewdefinition-export` kick-off, read: the level it runs at (Group with `group`, Patient
/// with `patient`, else system) and the export's parameters.
#[derive(Debug)]
pub struct ViewKickoff {
    pub level: ExportLevel,
    pub group_id: Option<String>,
    pub params: ExportParams,
}

fn bad(message: String) -> KickoffError {
    KickoffError::InvalidParameter(message)
}

/// The parameters of a kick-off as read, before they are checked together.
#[derive(Default)]
struct ViewRequest {
    views: Vec<NamedView>,
    format: Option<String>,
    header: Option<bool>,
    group_id: Option<String>,
    client_tracking_id: Option<String>,
    /// `patient` and `_since`, read by `$export`'s parameter parser.
    pairs: Vec<(String, String)>,
}

/// Reads the Parameters body of a `$viewdefinition-export` kick-off. Each `view` is validated
/// here, so that a view that cannot run is refused now with the element at fault, never at
/// export time.
pub fn parse_kickoff(
    body: &[u8],
    additional: &[String],
    stored: &StoredViews,
) -> Result<ViewKickoff, KickoffError> {
    let mut request = ViewRequest::default();
    for (i, param) in parameters(body)?.iter().enumerate() {
        let name = param
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("parameter[{i}] has no name")))?;
        request.add(name, param, stored)?;
    }
    request.into_kickoff(additional)
}

/// The `parameter` array of a Parameters body.
fn parameters(body: &[u8]) -> Result<Vec<Value>, KickoffError> {
    let mut v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad(
            "the body must be a FHIR Parameters resource with at least one `view`".into(),
        ));
    }
    match v.get_mut("parameter").map(Value::take) {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad("Parameters.parameter must be an array".into())),
    }
}

impl ViewRequest {
    /// Reads one parameter.
    fn add(&mut self, name: &str, param: &Value, stored: &StoredViews) -> Result<(), KickoffError> {
        match name {
            "view" => self.add_view(param, stored)?,
            "_format" => self.format = Some(text(param, name)?),
            "header" => {
                self.header = Some(
                    param
                        .get("valueBoolean")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| bad("header: a valueBoolean".into()))?,
                )
            }
            "group" => {
                let g = reference(param, name)?;
                let id = g.strip_prefix("Group/").unwrap_or(&g).to_string();
                if !params::is_fhir_id(&id) {
                    return Err(bad(format!("group: {g:?} is not a Group reference")));
                }
                self.group_id = Some(id);
            }
            "patient" => self.pairs.push((name.into(), reference(param, name)?)),
            "_since" => self.pairs.push((name.into(), text(param, name)?)),
            "clientTrackingId" => self.client_tracking_id = Some(text(param, name)?),
            other => {
                return Err(KickoffError::NotSupported(format!(
                    "{other}: not a parameter of $viewdefinition-export (view, _format, header, \
                     patient, group, _since, clientTrackingId)"
                )))
            }
        }
        Ok(())
    }

    /// A `view`: validated, its name unique among the job's views.
    fn add_view(&mut self, param: &Value, stored: &StoredViews) -> Result<(), KickoffError> {
        if self.views.len() == MAX_VIEWS {
            return Err(bad(format!(
                "view: more than {MAX_VIEWS} views; split the export"
            )));
        }
        let view = read_view(param, self.views.len(), stored)?;
        if self.views.iter().any(|v| v.name == view.name) {
            return Err(bad(format!(
                "view[{}]: the name {:?} is already another view's (each view's output has its \
                 own name)",
                self.views.len(),
                view.name
            )));
        }
        self.views.push(view);
        Ok(())
    }

    /// The export the parameters ask for: its level (Group with `group`, Patient with
    /// `patient`, else system), types (those of the views) and the views' format.
    fn into_kickoff(self, additional: &[String]) -> Result<ViewKickoff, KickoffError> {
        if self.views.is_empty() {
            return Err(bad("view: at least one view is required".into()));
        }
        let code = self.format.unwrap_or_else(|| "ndjson".into());
        let code = format_code(&code).ok_or_else(|| {
            KickoffError::NotSupported(format!(
                "_format: {code:?} is not supported (ndjson, csv or parquet)"
            ))
        })?;
        let level = match (
            &self.group_id,
            self.pairs.iter().any(|(n, _)| n == "patient"),
        ) {
            (Some(_), _) => ExportLevel::Group,
            (None, true) => ExportLevel::Patient,
            (None, false) => ExportLevel::System,
        };
        let mut p = params::parse_params(level, &self.pairs, additional, false)?;
        let mut types: Vec<String> = Vec::new();
        for v in &self.views {
            let t = view_type(&v.definition);
            if !types.contains(&t) {
                types.push(t);
            }
        }
        p.types = Some(types);
        p.view_format = Some(ViewFormat {
            code: code.to_string(),
            header: self.header.unwrap_or(true),
        });
        p.client_tracking_id = self.client_tracking_id;
        p.views = self.views;
        let stored = serde_json::to_string(&p.views).map_or(usize::MAX, |s| s.len());
        if stored > MAX_VIEWS_BYTES {
            return Err(bad(format!(
                "the views take {stored} bytes; at most {MAX_VIEWS_BYTES} are accepted"
            )));
        }
        Ok(ViewKickoff {
            level,
            group_id: self.group_id,
            params: p,
        })
    }
}

/// The format a `_format` value names (a SQL on FHIR output format code or a media type):
/// `ndjson`, `csv` or `parquet`.
pub fn format_code(value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase();
    let media = v.split(';').next().unwrap_or_default().trim();
    Some(match media {
        "ndjson" | "application/x-ndjson" | "application/ndjson" | "application/fhir+ndjson" => {
            "ndjson"
        }
        "csv" | "text/csv" => "csv",
        "parquet" | "application/vnd.apache.parquet" | "application/parquet" => "parquet",
        _ => return None,
    })
}

/// The resource type of a validated ViewDefinition.
fn view_type(definition: &Value) -> String {
    definition
        .get("resource")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A parameter's text value (valueString, valueCode, …).
pub(crate) fn text(param: &Value, name: &str) -> Result<String, KickoffError> {
    params::TEXT_VALUE_TYPES
        .iter()
        .find_map(|k| param.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .filter(|s| !s.contains('\0'))
        .ok_or_else(|| bad(format!("{name}: a valueString or valueCode")))
}

/// A parameter's reference (`valueReference.reference`, or a text value).
pub(crate) fn reference(param: &Value, name: &str) -> Result<String, KickoffError> {
    param
        .get("valueReference")
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .map_or_else(|| text(param, name), Ok)
}

/// The ids of the stored ViewDefinitions a Parameters body refers to (`viewReference` parts, or
/// parameters), to be looked up before it is read.
pub fn referenced_views(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut visit = |p: &Value| {
        if p.get("name").and_then(Value::as_str) == Some("viewReference") {
            if let Some(id) = p
                .get("valueReference")
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .and_then(view_id)
            {
                out.push(id.to_string());
            }
        }
    };
    for p in v
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        visit(p);
        for part in p
            .get("part")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            visit(part);
        }
    }
    out.truncate(MAX_VIEWS);
    out
}

/// The id of a reference to a ViewDefinition (`ViewDefinition/x`, or a URL ending so).
pub fn view_id(reference: &str) -> Option<&str> {
    let (rest, id) = reference.trim_end_matches('/').rsplit_once('/')?;
    (rest.ends_with(VIEW_DEFINITION) && params::is_fhir_id(id)).then_some(id)
}

/// A stored ViewDefinition by reference, or why not.
pub fn stored_view<'a>(
    reference: &str,
    stored: &'a StoredViews,
    at: &str,
) -> Result<&'a Value, KickoffError> {
    let id = view_id(reference).ok_or_else(|| {
        bad(format!(
            "{at}.viewReference: {reference:?} is not a reference to a ViewDefinition"
        ))
    })?;
    stored.get(id).ok_or_else(|| {
        bad(format!(
            "{at}.viewReference: ViewDefinition/{id} is not stored on this server (load it \
             with bulk-export load, or send the view inline as viewResource)"
        ))
    })
}

/// One `view` parameter: its parts `name` and `viewResource` (inline) or `viewReference` (a
/// stored ViewDefinition). The ViewDefinition is validated; the output name is `name`, else
/// the view's own `name`, and must be a SQL on FHIR name (`^[A-Za-z][A-Za-z0-9_]*$`: it becomes
/// a file name and a table name).
fn read_view(param: &Value, n: usize, stored: &StoredViews) -> Result<NamedView, KickoffError> {
    let at = format!("view[{n}]");
    let parts = param
        .get("part")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("{at}: a view has parts (name, viewResource)")))?;
    let mut name: Option<String> = None;
    let mut definition: Option<&Value> = None;
    for part in parts {
        match part.get("name").and_then(Value::as_str) {
            Some("name") => name = Some(text(part, &format!("{at}.name"))?),
            Some("viewResource") => {
                definition = Some(
                    part.get("resource")
                        .ok_or_else(|| bad(format!("{at}.viewResource: a resource")))?,
                )
            }
            Some("viewReference") => {
                let reference = part
                    .get("valueReference")
                    .and_then(|r| r.get("reference"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}.viewReference: a valueReference")))?;
                definition = Some(stored_view(reference, stored, &at)?);
            }
            other => {
                return Err(bad(format!(
                    "{at}: unknown part {:?} (name, viewResource, viewReference)",
                    other.unwrap_or_default()
                )))
            }
        }
    }
    let definition =
        definition.ok_or_else(|| bad(format!("{at}: no viewResource or viewReference")))?;
    if definition.get("resourceType").and_then(Value::as_str) != Some("ViewDefinition") {
        return Err(bad(format!(
            "{at}.viewResource: resourceType must be ViewDefinition"
        )));
    }
    let view = sof::View::from_json(definition).map_err(|e| {
        bad(format!(
            "{at}.viewResource: {}: {}",
            e.expression(),
            e.message()
        ))
    })?;
    if !is_resource_type(view.resource_type()) {
        return Err(bad(format!(
            "{at}.viewResource: ViewDefinition.resource {:?} is not an R4 resource type",
            view.resource_type()
        )));
    }
    if view.columns().is_empty() {
        return Err(bad(format!("{at}.viewResource: the view has no columns")));
    }
    let name = name
        .or_else(|| view.name().map(str::to_string))
        .ok_or_else(|| {
            bad(format!(
                "{at}: no name (a name part, or ViewDefinition.name)"
            ))
        })?;
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(bad(format!(
            "{at}.name: {name:?} is not a view name (a letter, then letters, digits or _; at \
             most 64)"
        )));
    }
    Ok(NamedView {
        name,
        definition: definition.clone(),
    })
}

#[cfg(test)]
mod tests;
