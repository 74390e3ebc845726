//! Job coordination: what a claimed job needs before or after its items (plan, cancel, fail),
//! and the purge of expired and deleted exports' files.

use tracing::{info, warn};

use super::planner;
use super::Failure::{Permanent, Transient};
use super::{job_error, EngineError, Exporter, Failure, Leased, RunSummary, Unexportable};
use crate::db::jobs;
use crate::db::planning::{self, PatientSet};
use crate::db::{files, resources, DbError};
use crate::export::job::{ExportLevel, Job, JobStatus};
use crate::fhir::outcome::Severity;
use crate::fhir::OperationOutcome;

impl Exporter {
    /// A claimed job: cancel it, fail it (too many attempts at planning) or plan it.
    pub(super) async fn coordinate(
        &self,
        job: Job,
        summary: &mut RunSummary,
    ) -> Result<(), EngineError> {
        if job.status == JobStatus::CancellationRequested {
            self.cancel(&job).await?;
            summary.cancelled.push(job.id);
            return Ok(());
        }
        if job.attempts >= self.config.max_attempts {
            let error = gave_up(
                job.attempts,
                job.error.as_deref(),
                job.public_error.as_deref(),
            );
            warn!(attempts = job.attempts, error = %error.internal, "export failed for good");
            self.fail(&job, Some(&self.owner), &error, summary).await?;
            return Ok(());
        }
        if !job.planned && job.attempts == 0 {
            crate::metrics::job_picked_up(super::since_kickoff(&job));
        }
        let heartbeat = self.keep_leased(Leased::Job(job.id));
        let planned = self.plan(&job).await;
        drop(heartbeat);
        match planned {
            Ok(0) => {
                if jobs::complete_job(&self.pool, job.id, &self.owner, self.config.job_retention)
                    .await?
                {
                    info!("export complete: nothing to export");
                    summary.complete(&job);
                }
            }
            Ok(items) => {
                // One wake-up per item: in AWS each is an SQS message, so up to the exporter's
                // maximum concurrency of invocations share the job; in `serve` idle workers wake.
                if let Err(e) = self.queue.send_many(job.id, items).await {
                    warn!(error = %e, "could not send wake-ups; the schedule will find the items");
                }
            }
            Err(Permanent(msg)) => {
                warn!(error = %msg, "export failed");
                let error = jobs::JobError::permanent(msg.to_string());
                self.fail(&job, Some(&self.owner), &error, summary).await?;
            }
            Err(Transient(e)) => {
                let error = job_error(&e);
                warn!(error = %error.internal, "planning failed");
                let status = jobs::record_failure(
                    &self.pool,
                    job.id,
                    &self.owner,
                    &error,
                    self.config.max_attempts,
                    self.retry_backoff,
                    self.config.job_retention,
                )
                .await?;
                summary.attempt_failed(&job, status);
            }
        }
        Ok(())
    }

    /// Fails the job (held by `owner`, or by anyone) and counts it in the summary.
    pub(super) async fn fail(
        &self,
        job: &Job,
        owner: Option<&str>,
        error: &jobs::JobError,
        summary: &mut RunSummary,
    ) -> Result<(), EngineError> {
        if jobs::fail_job(&self.pool, job.id, owner, error, self.config.job_retention).await? {
            summary.fail(job);
        }
        Ok(())
    }

    async fn cancel(&self, job: &Job) -> Result<(), EngineError> {
        let n = self.store.delete_prefix(&job.id.to_string()).await?;
        jobs::mark_cancelled(&self.pool, job.id, &self.owner).await?;
        info!(files_deleted = n, "export cancelled");
        Ok(())
    }

    /// Deletes the files of jobs the client deleted or that passed their expiry.
    pub async fn purge_finished(&self) -> Result<usize, EngineError> {
        let ids = jobs::select_jobs_to_purge(&self.pool, 100, Some(&self.storage)).await?;
        for id in &ids {
            let n = self.store.delete_prefix(&id.to_string()).await?;
            jobs::mark_purged(&self.pool, *id).await?;
            info!(job_id = %id, files_deleted = n, "export files purged");
        }
        Ok(ids.len())
    }

    /// Fixes the job's patients and splits it into work items; returns the open items.
    async fn plan(&self, job: &Job) -> Result<usize, Failure> {
        let present = resources::select_resource_types(&self.pool).await?;
        let types = planner::export_types(
            job,
            &self.config.additional_resources,
            job.params.types.as_deref(),
            &present,
        );
        let group = match (job.level, &job.group_id) {
            (ExportLevel::Group, Some(g)) => {
                if !resources::resource_exists(&self.pool, "Group", g).await? {
                    return Err(Permanent(Unexportable::GroupGone(g.to_string())));
                }
                Some(g.as_str())
            }
            (ExportLevel::Group, None) => return Err(Permanent(Unexportable::NoGroupId)),
            _ => None,
        };
        let patients = match (job.level, &job.params.patients, group) {
            (ExportLevel::System, _, _) => PatientSet::None,
            (_, Some(ids), group) => PatientSet::Listed { ids, group },
            (_, None, Some(g)) => PatientSet::Group(g),
            (_, None, None) => PatientSet::All,
        };
        // Lenient handling: what the kick-off ignored is reported in error[].
        if !job.params.ignored.is_empty() {
            let lines: Vec<OperationOutcome> = job
                .params
                .ignored
                .iter()
                .map(|m| OperationOutcome::new(Severity::Warning, "not-supported", m.clone()))
                .collect();
            let file = self
                .write_outcomes(job.id, "OperationOutcome-request.ndjson".into(), &lines)
                .await?;
            let client = self.pool.get().await.map_err(DbError::from)?;
            files::insert_files(&client, job.id, &[file]).await?;
        }
        let blocks = job.params.organize_output_by.is_some();
        let item_bytes = self.config.item_bytes;
        // The job's references to its AdditionalResources are written once with the plan
        // (Patient and Group level); the type items and the dangling-reference check read
        // them by type.
        let layout = planner::JobLayout::new(job, &self.config, types.clone(), &present);
        let additional: Vec<String> = types
            .iter()
            .filter(|t| self.config.additional_resources.contains(t))
            .cloned()
            .collect();
        let refs = (job.level != ExportLevel::System && !additional.is_empty()).then(|| {
            planning::JobRefs {
                source_types: &layout.referencing_types,
                target_types: &additional,
                transaction_time: planner::export_time(job),
                since: job.params.since,
            }
        });
        let open = planning::mark_planned(
            &self.pool,
            job.id,
            &types,
            patients,
            refs,
            planning::PlanSettings {
                item_bytes,
                scan_share: self.config.scan_patient_share,
                scan_max_patients: self.config.scan_max_patients,
            },
            |sizes| planner::split_items(&types, blocks, sizes, item_bytes),
        )
        .await?;
        info!(types = types.len(), items = open, "export planned");
        Ok(open)
    }
}

/// The error of a job that failed after `attempts` attempts.
pub(super) fn gave_up(
    attempts: i32,
    internal: Option<&str>,
    public: Option<&str>,
) -> jobs::JobError {
    jobs::JobError {
        internal: format!(
            "export gave up after {attempts} attempts; last error: {}",
            internal.unwrap_or("the exporter stopped unexpectedly")
        ),
        public: format!(
            "the export failed after {attempts} attempts: {}",
            public.unwrap_or("the exporter stopped unexpectedly")
        ),
    }
}
