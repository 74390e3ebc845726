//! Starting an export: the token's scopes narrow or refuse the types, a Group must exist, listed
//! patients must exist (and be the Group's), the client's limits hold; then the job is queued and
//! the exporter woken.

use uuid::Uuid;

use super::ServiceError;
use crate::app::AppState;
use crate::auth::{Principal, TypeSet};
use crate::db::{jobs, resources};
use crate::export::params::{is_fhir_id, ExportParams};
use crate::export::ExportLevel;

/// A kick-off, parsed.
pub struct StartExport<'a> {
    pub level: ExportLevel,
    pub group_id: Option<&'a str>,
    pub params: ExportParams,
    /// Who asks (None: authorization is off).
    pub principal: Option<&'a Principal>,
    /// `Prefer: handling=lenient`: what cannot be honoured is reported, not refused.
    pub lenient: bool,
    /// The kick-off URL (the manifest's `request`).
    pub request_url: String,
}

/// Queues the export and wakes the exporter; the new job's id.
pub async fn start_export(state: &AppState, start: StartExport<'_>) -> Result<Uuid, ServiceError> {
    let StartExport {
        level,
        group_id,
        mut params,
        principal,
        lenient,
        request_url,
    } = start;
    if let Some(p) = principal {
        restrict_to_scopes(&mut params, p, lenient)?;
    }
    if let Some(group_id) = group_id {
        if !is_fhir_id(group_id)
            || !resources::resource_exists(&state.pool, "Group", group_id).await?
        {
            return Err(ServiceError::NotFound(format!(
                "Group/{group_id} is not known"
            )));
        }
    }
    if let Some(patients) = params.patients.take() {
        params.patients =
            Some(known_patients(state, &mut params, patients, group_id, lenient).await?);
    }
    let limits = jobs::JobLimits {
        running: state.config.max_concurrent_exports,
        stored: state.config.max_stored_exports,
    };
    let new = jobs::NewJob {
        level,
        group_id,
        params: &params,
        request_url: &request_url,
        client_id: principal.map(|p| p.client_id.as_str()),
    };
    let storage = state.config.storage_path.identity();
    let job = match jobs::insert_job_in(&state.pool, new, limits, Some(&storage)).await? {
        Ok(job) => job,
        Err(jobs::LimitReached::Running(n)) => {
            return Err(ServiceError::TooManyRequests {
                message: format!(
                    "{n} exports are already running for this client (limit {}); retry later or cancel one",
                    limits.running
                ),
                retry_after: 30,
            })
        }
        Err(jobs::LimitReached::Stored(n)) => {
            return Err(ServiceError::TooManyRequests {
                message: format!(
                    "this client has {n} exports whose files are kept (limit {}); DELETE the ones it no longer needs (their status URL) or wait until they expire",
                    limits.stored
                ),
                retry_after: 60,
            })
        }
    };
    crate::metrics::export_started(job.level.as_str());
    tracing::info!(job_id = %job.id, level = level.as_str(), "export queued");
    if let Err(e) = state.queue.send(job.id).await {
        tracing::warn!(job_id = %job.id, error = %e, "wake-up not sent; the schedule will pick the job up");
    }
    Ok(job.id)
}

/// The listed patients that exist (and are the Group's): an unknown one is refused, or with
/// lenient handling left out and reported; none left is refused.
async fn known_patients(
    state: &AppState,
    params: &mut ExportParams,
    patients: Vec<String>,
    group_id: Option<&str>,
    lenient: bool,
) -> Result<Vec<String>, ServiceError> {
    let unknown = resources::select_unknown_patients(&state.pool, &patients, group_id).await?;
    if !unknown.is_empty() {
        let what = match group_id {
            Some(g) => format!("not Patients in Group/{g}"),
            None => "not known Patients".to_string(),
        };
        let msg = format!("patient: {} {what}", unknown.join(", "));
        if !lenient {
            return Err(ServiceError::Invalid(msg));
        }
        params
            .ignored
            .push(format!("{msg} (ignored: Prefer handling=lenient)"));
    }
    let known: Vec<String> = patients
        .into_iter()
        .filter(|p| !unknown.contains(p))
        .collect();
    if known.is_empty() {
        return Err(ServiceError::Invalid(
            "patient: none of the patients can be exported".into(),
        ));
    }
    Ok(known)
}

/// A token limited to some types: a `_type` outside them is refused (403), or with lenient
/// handling narrowed and reported; without `_type`, only its types are exported.
pub fn restrict_to_scopes(
    params: &mut ExportParams,
    principal: &Principal,
    lenient: bool,
) -> Result<(), ServiceError> {
    let TypeSet::Only(allowed) = &principal.types else {
        return Ok(());
    };
    if let Some(types) = &mut params.types {
        let denied: Vec<String> = types
            .iter()
            .filter(|t| !allowed.contains(*t))
            .cloned()
            .collect();
        if !denied.is_empty() {
            let msg = format!(
                "_type: the access token's scopes do not cover {}",
                denied.join(", ")
            );
            if !lenient {
                return Err(ServiceError::Forbidden(msg));
            }
            types.retain(|t| allowed.contains(t));
            params
                .ignored
                .push(format!("{msg} (ignored: Prefer handling=lenient)"));
            if types.is_empty() {
                return Err(ServiceError::Forbidden(
                    "_type: the access token's scopes cover none of the requested types".into(),
                ));
            }
        }
    }
    params.allowed_types = Some(allowed.iter().cloned().collect());
    Ok(())
}
