//! Planning, as pure functions: which types a job exports, which resources of a type it selects,
//! and how its data is split into work items sized by bytes. The engine reads the database and
//! calls these; nothing here does I/O.

use uuid::Uuid;

use crate::config::Config;
use crate::db::planning::DataSizes;
use crate::db::reads::{Associated, PatientScope, Selection};
use crate::db::work_items::{NewItem, BLOCKS_ITEM};
use crate::export::job::{ExportLevel, Job};
use crate::export::params::AssociatedData;
use crate::fhir::resource_types::{is_patient_compartment_type, patient_compartment_types};

/// The types of the job's export: `_type`, or without it every type the level can export;
/// plus Provenance with includeAssociatedData; only types the token covers and that exist.
pub fn export_types(
    job: &Job,
    additional_resources: &[String],
    requested: Option<&[String]>,
    present: &[String],
) -> Vec<String> {
    let mut candidates: Vec<String> = match (requested, job.level) {
        (Some(types), _) => types.to_vec(),
        (None, ExportLevel::System) => present.to_vec(),
        (None, _) => patient_compartment_types()
            .map(str::to_string)
            .chain(additional_resources.iter().cloned())
            .collect(),
    };
    // includeAssociatedData brings the Provenance of the exported resources, whatever _type.
    if !job.params.include_associated_data.is_empty() {
        candidates.push("Provenance".into());
    }
    // Never a type the client's token does not cover.
    if let Some(allowed) = &job.params.allowed_types {
        candidates.retain(|t| allowed.contains(t));
    }
    let mut types: Vec<String> = candidates
        .into_iter()
        .filter(|t| present.contains(t))
        .collect();
    types.sort();
    types.dedup();
    types
}

/// Splits the job's types into work items of about `item_bytes` each: key ranges
/// (`lo`, `hi`] cut at sampled ids, so that the bytes the samples stand for (scaled by the
/// share of patients the job covers) add up to `item_bytes` per range. The first range starts
/// at the beginning of the type and the last has no end, so the items cover every id whatever
/// the samples missed. Without samples (small data) each type is one item. With
/// `organizeOutputBy`, one blocks item does the work and the per-type items only record the
/// types (planned done).
pub fn split_items(
    types: &[String],
    blocks: bool,
    sizes: &DataSizes,
    item_bytes: u64,
) -> Vec<NewItem> {
    let whole = |t: &String, done: bool| NewItem {
        resource_type: t.clone(),
        part: 0,
        lo_id: String::new(),
        hi_id: None,
        done,
    };
    if blocks {
        let mut items: Vec<NewItem> = types.iter().map(|t| whole(t, true)).collect();
        items.push(whole(&BLOCKS_ITEM.to_string(), false));
        return items;
    }
    let weight = sizes.scale * sizes.fraction;
    let target = item_bytes.max(1) as f64;
    let mut items = Vec::new();
    for t in types {
        let samples = sizes.samples.iter().filter(|(st, _, _)| st == t);
        let mut cuts: Vec<&str> = Vec::new();
        let mut bytes = 0.0;
        for (_, id, len) in samples {
            bytes += *len as f64 * weight;
            if bytes >= target {
                cuts.push(id);
                bytes = 0.0;
            }
        }
        // A last range with (almost) nothing left joins the one before it.
        if bytes < target / 4.0 {
            cuts.pop();
        }
        let mut lo = String::new();
        for (part, cut) in cuts.iter().enumerate() {
            items.push(NewItem {
                resource_type: t.clone(),
                part: part as i32,
                lo_id: std::mem::replace(&mut lo, (*cut).to_string()),
                hi_id: Some((*cut).to_string()),
                done: false,
            });
        }
        items.push(NewItem {
            resource_type: t.clone(),
            part: cuts.len() as i32,
            lo_id: lo,
            hi_id: None,
            done: false,
        });
    }
    items
}

/// The job's types as its items need them (from its planned items and the data's types).
#[derive(Debug, Clone, Default)]
pub struct JobLayout {
    pub types: Vec<String>,
    /// Compartment types among them.
    pub exported_compartment_types: Vec<String>,
    /// Compartment types whose references bring AdditionalResources (whatever `_type`).
    pub referencing_types: Vec<String>,
    /// Types whose Provenance comes with includeAssociatedData (all but Provenance).
    pub target_types: Vec<String>,
}

impl JobLayout {
    /// `types`: the job's planned types; `present`: the types in the database.
    pub fn new(job: &Job, config: &Config, types: Vec<String>, present: &[String]) -> JobLayout {
        let exported_compartment_types = types
            .iter()
            .filter(|t| is_patient_compartment_type(t))
            .cloned()
            .collect();
        let target_types = types
            .iter()
            .filter(|t| *t != "Provenance")
            .cloned()
            .collect();
        // AdditionalResources are those referenced by the patients' compartment, whichever
        // types `_type` asked for: `_type` filters the output, not the traversal (so
        // `Patient/$export?_type=Organization` gives the Organizations the unfiltered export
        // gives). The compartment types are those an unfiltered export of this job would have.
        let referencing_types = if job.level == ExportLevel::System {
            Vec::new()
        } else {
            export_types(job, &config.additional_resources, None, present)
                .into_iter()
                .filter(|t| is_patient_compartment_type(t))
                .collect()
        };
        JobLayout {
            types,
            exported_compartment_types,
            referencing_types,
            target_types,
        }
    }

    /// Which resources of `resource_type` the job exports, within ids (`after`, `upto`].
    pub fn selection<'a>(
        &'a self,
        job: &Job,
        config: &Config,
        resource_type: &'a str,
        upto: Option<&'a str>,
    ) -> Selection<'a> {
        let additional = job.level != ExportLevel::System
            && config
                .additional_resources
                .iter()
                .any(|t| t == resource_type);
        let referenced_from: &[String] = if additional {
            &self.referencing_types
        } else {
            &[]
        };
        Selection {
            job_id: job.id,
            resource_type,
            upto,
            transaction_time: export_time(job),
            since: job.params.since,
            scope: (job.level != ExportLevel::System).then_some(PatientScope {
                compartment: is_patient_compartment_type(resource_type),
                referenced_from,
                scan_patients: job.scan_patients,
            }),
            associated: (resource_type == "Provenance")
                .then(|| provenance_association(job, &self.target_types))
                .flatten(),
        }
    }
}

/// The instant the export shows the data at: the transaction time, or `_until` (v3) when
/// earlier (phase 1 reads the versions of that time).
pub fn export_time(job: &Job) -> chrono::DateTime<chrono::Utc> {
    job.params
        .until
        .map_or(job.transaction_time, |u| u.min(job.transaction_time))
}

/// How a job's Provenance work item selects (None: like any other type).
///
/// - `LatestProvenanceResources`: only the latest Provenance (by `recorded`) of each exported
///   resource, at every level.
/// - Patient/Group level otherwise: the compartment's Provenance and every Provenance whose
///   target is an exported resource (IG: Provenance of the returned data comes along).
/// - System level with `RelevantProvenanceResources` and a `_type` without Provenance: the
///   Provenance whose target is an exported resource; with Provenance requested, all of them.
pub fn provenance_association<'a>(job: &Job, target_types: &'a [String]) -> Option<Associated<'a>> {
    let asked = |v: AssociatedData| job.params.include_associated_data.contains(&v);
    let provenance_requested = job
        .params
        .types
        .as_ref()
        .is_none_or(|t| t.iter().any(|x| x == "Provenance"));
    let (latest, with_scope) = if asked(AssociatedData::LatestProvenance) {
        (true, false)
    } else if job.level != ExportLevel::System {
        (false, provenance_requested)
    } else if asked(AssociatedData::RelevantProvenance) && !provenance_requested {
        (false, false)
    } else {
        return None;
    };
    Some(Associated {
        target_types,
        latest,
        with_scope,
    })
}

/// The object key of a job's file.
pub fn object_key(job_id: Uuid, file_name: &str) -> String {
    format!("{job_id}/{file_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(samples: &[(&str, &str, i64)], scale: f64, fraction: f64) -> DataSizes {
        DataSizes {
            fraction,
            table_bytes: 0,
            samples: samples
                .iter()
                .map(|(t, i, l)| (t.to_string(), i.to_string(), *l))
                .collect(),
            scale,
        }
    }

    fn ranges(items: &[NewItem], t: &str) -> Vec<(String, Option<String>)> {
        items
            .iter()
            .filter(|i| i.resource_type == t)
            .map(|i| (i.lo_id.clone(), i.hi_id.clone()))
            .collect()
    }

    #[test]
    fn without_samples_each_type_is_one_item_over_all_its_ids() {
        let types = vec!["Observation".to_string(), "Patient".to_string()];
        let items = split_items(&types, false, &DataSizes::default(), 1000);
        assert_eq!(items.len(), 2);
        for i in &items {
            assert_eq!(
                (i.part, i.lo_id.as_str(), i.hi_id.as_deref()),
                (0, "", None)
            );
            assert!(!i.done);
        }
    }

    #[test]
    fn ranges_are_cut_by_scaled_bytes_and_cover_every_id() {
        let types = vec!["Observation".to_string()];
        // Ten samples of 100 bytes, each standing for 10×: 10,000 bytes in 2,500-byte items.
        let samples: Vec<(String, String, i64)> = (0..10)
            .map(|n| ("Observation".to_string(), format!("o{n}"), 100))
            .collect();
        let s = DataSizes {
            fraction: 1.0,
            table_bytes: 0,
            samples,
            scale: 10.0,
        };
        let items = split_items(&types, false, &s, 2500);
        assert_eq!(
            ranges(&items, "Observation"),
            vec![
                ("".into(), Some("o2".into())),
                ("o2".into(), Some("o5".into())),
                ("o5".into(), Some("o8".into())),
                ("o8".into(), None),
            ]
        );
        let parts: Vec<i32> = items.iter().map(|i| i.part).collect();
        assert_eq!(parts, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_small_remainder_joins_the_range_before_it() {
        let types = vec!["Observation".to_string()];
        let s = sizes(
            &[
                ("Observation", "a", 1000),
                ("Observation", "b", 1000),
                ("Observation", "c", 10),
            ],
            1.0,
            1.0,
        );
        let items = split_items(&types, false, &s, 1000);
        assert_eq!(
            ranges(&items, "Observation"),
            vec![("".into(), Some("a".into())), ("a".into(), None)]
        );
    }

    #[test]
    fn the_patient_share_scales_the_estimate() {
        let types = vec!["Condition".to_string(), "Patient".to_string()];
        let s = sizes(
            &[
                ("Condition", "c1", 500),
                ("Condition", "c2", 500),
                ("Patient", "p1", 500),
            ],
            4.0,
            0.1,
        );
        // 1,000 sampled bytes × 4 × 10 % = 400 bytes: one item per type.
        let items = split_items(&types, false, &s, 1000);
        assert_eq!(items.len(), 2);
        let all = split_items(&types, false, &DataSizes { fraction: 1.0, ..s }, 1000);
        assert_eq!(ranges(&all, "Condition").len(), 2);
    }

    #[test]
    fn organize_output_by_patient_is_one_blocks_item_and_the_types_are_recorded_done() {
        let types = vec!["Condition".to_string(), "Patient".to_string()];
        let items = split_items(&types, true, &DataSizes::default(), 1);
        let open: Vec<&str> = items
            .iter()
            .filter(|i| !i.done)
            .map(|i| i.resource_type.as_str())
            .collect();
        assert_eq!(open, vec![BLOCKS_ITEM]);
        assert_eq!(items.len(), 3);
    }
}
