//! Export jobs and their state machine (Firely's state names).
//!
//! ```text
//! Queued → Active → Complete | Failed
//! Queued | Active → CancellationRequested → Cancelled
//! ```
//! Terminal states never change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::params::ExportParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportLevel {
    System,
    Patient,
    Group,
}

impl ExportLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportLevel::System => "system",
            ExportLevel::Patient => "patient",
            ExportLevel::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(ExportLevel::System),
            "patient" => Some(ExportLevel::Patient),
            "group" => Some(ExportLevel::Group),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Queued,
    Active,
    Complete,
    Failed,
    CancellationRequested,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Active,
        JobStatus::Complete,
        JobStatus::Failed,
        JobStatus::CancellationRequested,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "Queued",
            JobStatus::Active => "Active",
            JobStatus::Complete => "Complete",
            JobStatus::Failed => "Failed",
            JobStatus::CancellationRequested => "CancellationRequested",
            JobStatus::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No exporter moves it on (an operator may retry a Failed job).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Complete | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Whether the state machine allows `self → to`.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Queued, Active)
                | (Active, Complete)
                | (Queued | Active, Failed)
                | (Queued | Active, CancellationRequested)
                | (CancellationRequested, Cancelled)
                // An operator's retry (`bulk-export jobs ID --retry`): Queued when it had not
                // been planned yet, else Active with its finished parts kept.
                | (Failed, Queued | Active)
        )
    }
}

/// A change of state the database makes: an UPDATE of `export_jobs` to `to`, guarded by
/// [`Transition::guard`] (its `from` states). These are the only status changes in SQL, and a
/// test checks them against [`JobStatus::can_become`], so the two cannot drift apart.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub from: &'static [JobStatus],
    pub to: JobStatus,
}

impl Transition {
    /// An exporter claims a queued job.
    pub const CLAIM: Transition = Transition {
        from: &[JobStatus::Queued],
        to: JobStatus::Active,
    };
    /// The last work item's checkpoint.
    pub const COMPLETE: Transition = Transition {
        from: &[JobStatus::Active],
        to: JobStatus::Complete,
    };
    /// A permanent failure, or the last attempt's.
    pub const FAIL: Transition = Transition {
        from: &[JobStatus::Queued, JobStatus::Active],
        to: JobStatus::Failed,
    };
    /// A client's DELETE of a running job.
    pub const REQUEST_CANCELLATION: Transition = Transition {
        from: &[JobStatus::Queued, JobStatus::Active],
        to: JobStatus::CancellationRequested,
    };
    /// Its files are gone.
    pub const CANCELLED: Transition = Transition {
        from: &[JobStatus::CancellationRequested],
        to: JobStatus::Cancelled,
    };
    /// An operator's retry of a job that had been planned.
    pub const RETRY_PLANNED: Transition = Transition {
        from: &[JobStatus::Failed],
        to: JobStatus::Active,
    };
    /// An operator's retry of a job that had not been planned.
    pub const RETRY_UNPLANNED: Transition = Transition {
        from: &[JobStatus::Failed],
        to: JobStatus::Queued,
    };

    pub const ALL: [Transition; 7] = [
        Transition::CLAIM,
        Transition::COMPLETE,
        Transition::FAIL,
        Transition::REQUEST_CANCELLATION,
        Transition::CANCELLED,
        Transition::RETRY_PLANNED,
        Transition::RETRY_UNPLANNED,
    ];

    /// SQL: whether `column` (qualified as the statement needs) holds a `from` state,
    /// e.g. `j.status IN ('Queued', 'Active')`.
    pub fn guard(&self, column: &str) -> String {
        let states: Vec<String> = self
            .from
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!("{column} IN ({})", states.join(", "))
    }

    /// SQL: the target state as a literal.
    pub fn target(&self) -> String {
        format!("'{}'", self.to.as_str())
    }
}

/// An export job as stored in `export_jobs`.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub level: ExportLevel,
    pub group_id: Option<String>,
    pub params: ExportParams,
    pub request_url: String,
    /// The SMART client that started the export (None when authorization is off).
    pub client_id: Option<String>,
    pub transaction_time: DateTime<Utc>,
    pub status: JobStatus,
    pub planned: bool,
    pub attempts: i32,
    /// The internal error of a failed attempt or job (operators only).
    pub error: Option<String>,
    /// What a client is told about a failed job.
    pub public_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Planned to read its compartment types by scanning them, with this many patients (None:
    /// through its patients' `compartment` rows; see `Config::scan_patient_share`).
    pub scan_patients: Option<i64>,
}

impl Job {
    /// Whether the requesting client may see this job: always when authorization is off
    /// (`client` None), else only the client that started it.
    pub fn visible_to(&self, client: Option<&str>) -> bool {
        client.is_none() || self.client_id.as_deref() == client
    }
}

#[cfg(test)]
mod tests {
    use super::JobStatus::*;
    use super::*;

    #[test]
    fn terminal_states_change_only_by_an_operators_retry() {
        for from in [Complete, Failed, Cancelled] {
            assert!(from.is_terminal());
            for to in JobStatus::ALL {
                let retry = from == Failed && matches!(to, Queued | Active);
                assert_eq!(from.can_become(to), retry, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn the_databases_transitions_are_exactly_the_state_machine() {
        let mut made = Vec::new();
        for t in Transition::ALL {
            for from in t.from {
                assert!(from.can_become(t.to), "{from:?} -> {:?} in SQL", t.to);
                made.push((*from, t.to));
            }
        }
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                if from.can_become(to) {
                    assert!(made.contains(&(from, to)), "{from:?} -> {to:?} never made");
                }
            }
        }
        assert_eq!(
            Transition::FAIL.guard("status"),
            "status IN ('Queued', 'Active')"
        );
        assert_eq!(Transition::CANCELLED.target(), "'Cancelled'");
    }

    #[test]
    fn the_happy_path_and_cancellation_are_allowed() {
        assert!(Queued.can_become(Active));
        assert!(Active.can_become(Complete));
        assert!(Active.can_become(Failed));
        assert!(Queued.can_become(CancellationRequested));
        assert!(Active.can_become(CancellationRequested));
        assert!(CancellationRequested.can_become(Cancelled));
        assert!(!Queued.can_become(Complete));
        assert!(!CancellationRequested.can_become(Complete));
        assert!(!Active.can_become(Queued));
    }

    #[test]
    fn status_names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("Done"), None);
    }
}
