//! The test data set and expected export contents computed independently of the exporter:
//! plain reference scans over the input files, not the exporter's compartment traversal.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

mod generate;
pub use generate::*;

/// The AdditionalResources default (Firely).
pub const ADDITIONAL: &[&str] = shared::config::DEFAULT_ADDITIONAL_RESOURCES;

pub struct DataSet {
    pub dir: PathBuf,
    pub resources: Vec<Value>,
    pub group_id: String,
}

impl DataSet {
    /// ../shared/data/synthea-bulk-data-server-100 when present (and not hidden by
    /// `TEST_WITHOUT_SHARED`), else a generated set. Tests assert the same things of both: every
    /// expectation is computed from the data, and the generated set has every shape they need.
    pub fn load() -> DataSet {
        match crate::shared_data("synthea-bulk-data-server-100") {
            Some(dir) => Self::from_dir(dir),
            None => {
                let dir = crate::temp_dir();
                generate(&dir, 40);
                Self::from_dir(dir)
            }
        }
    }

    pub fn from_dir(dir: PathBuf) -> DataSet {
        let mut resources: Vec<Value> = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("data dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("ndjson"))
            .collect();
        files.sort();
        for f in files {
            for line in std::fs::read_to_string(&f).expect("read").lines() {
                if !line.trim().is_empty() {
                    resources.push(serde_json::from_str(line).expect("data set line is JSON"));
                }
            }
        }
        let group_id = resources
            .iter()
            .find(|r| r["resourceType"] == "Group")
            .and_then(|g| g["id"].as_str())
            .expect("data set has a Group")
            .to_string();
        DataSet {
            dir,
            resources,
            group_id,
        }
    }

    pub fn count_by_type(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in &self.resources {
            *out.entry(rtype(r).to_string()).or_default() += 1;
        }
        out
    }

    pub fn group_members(&self) -> BTreeSet<String> {
        let group = self
            .resources
            .iter()
            .find(|r| r["resourceType"] == "Group" && r["id"] == self.group_id.as_str())
            .expect("group");
        group["member"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(|m| m["entity"]["reference"].as_str())
            .filter_map(|r| r.strip_prefix("Patient/"))
            .map(str::to_string)
            .collect()
    }

    pub fn patient_ids(&self) -> BTreeSet<String> {
        self.resources
            .iter()
            .filter(|r| r["resourceType"] == "Patient")
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// Expected counts per type of a Patient-level (all patients) or Group-level export:
    /// compartment-type resources that reference one of `patients`, the Patients themselves,
    /// and AdditionalResources-type resources those reference.
    pub fn expected_compartment_export(
        &self,
        patients: &BTreeSet<String>,
    ) -> BTreeMap<String, usize> {
        let compartment_types = compartment_types();
        let included: Vec<&Value> = self
            .resources
            .iter()
            .filter(|r| in_compartments(r, patients, &compartment_types))
            .collect();
        let mut referenced: BTreeSet<(String, String)> = BTreeSet::new();
        for r in &included {
            for (t, id) in refs(r) {
                if ADDITIONAL.contains(&t.as_str()) {
                    referenced.insert((t, id));
                }
            }
        }
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        for r in &included {
            seen.insert((
                rtype(r).to_string(),
                r["id"].as_str().unwrap_or_default().to_string(),
            ));
        }
        for r in &self.resources {
            let key = (
                rtype(r).to_string(),
                r["id"].as_str().unwrap_or_default().to_string(),
            );
            if referenced.contains(&key) && !seen.contains(&key) {
                seen.insert(key);
            }
        }
        // Provenance whose target is an exported resource comes along (includeAssociatedData's
        // default); its own references do not pull in AdditionalResources.
        let exported: BTreeSet<(String, String)> = seen.clone();
        for r in &self.resources {
            if rtype(r) == "Provenance" {
                let targets = provenance_targets(r);
                if targets.iter().any(|t| exported.contains(t)) {
                    seen.insert((
                        "Provenance".into(),
                        r["id"].as_str().unwrap_or_default().into(),
                    ));
                }
            }
        }
        for (t, _) in seen {
            *out.entry(t).or_default() += 1;
        }
        out
    }

    /// Distinct references to AdditionalResources-type resources that do not exist, made by
    /// the compartment resources of `patients` (a Patient/Group export reports each in error[]).
    /// Only types of which the data set has resources: the exporter looks for dangling
    /// references per exported type, and a type with no resources at all is not exported.
    pub fn dangling_references(&self, patients: &BTreeSet<String>) -> BTreeSet<(String, String)> {
        let compartment_types = compartment_types();
        let existing: BTreeSet<(String, String)> = self
            .resources
            .iter()
            .map(|r| {
                (
                    rtype(r).to_string(),
                    r["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut out = BTreeSet::new();
        for r in self
            .resources
            .iter()
            .filter(|r| in_compartments(r, patients, &compartment_types))
        {
            for k in refs(r) {
                if ADDITIONAL.contains(&k.0.as_str())
                    && !existing.contains(&k)
                    && existing.iter().any(|(t, _)| *t == k.0)
                {
                    out.insert(k);
                }
            }
        }
        out
    }

    /// (type, id) of what the block of `patient` holds in an `organizeOutputBy=Patient` export
    /// of every type: the Patient, compartment-type resources (not Group) that reference it,
    /// the existing AdditionalResources those reference, and the Provenance that targets one of
    /// those compartment resources.
    pub fn expected_block(&self, patient: &str) -> BTreeSet<(String, String)> {
        let compartment_types = compartment_types();
        let key = |r: &Value| {
            (
                rtype(r).to_string(),
                r["id"].as_str().unwrap_or_default().to_string(),
            )
        };
        let existing: BTreeSet<(String, String)> = self.resources.iter().map(key).collect();
        let members: Vec<&Value> = self
            .resources
            .iter()
            .filter(|r| {
                let t = rtype(r);
                if t == "Patient" {
                    r["id"] == patient
                } else {
                    t != "Group"
                        && compartment_types.contains(t)
                        && refs(r)
                            .iter()
                            .any(|(rt, rid)| rt == "Patient" && rid == patient)
                }
            })
            .collect();
        let member_keys: BTreeSet<(String, String)> = members.iter().map(|r| key(r)).collect();
        let mut out = member_keys.clone();
        for r in &members {
            for (t, id) in refs(r) {
                let k = (t, id);
                if ADDITIONAL.contains(&k.0.as_str()) && existing.contains(&k) {
                    out.insert(k);
                }
            }
        }
        for r in self.resources.iter().filter(|r| rtype(r) == "Provenance") {
            if provenance_targets(r)
                .iter()
                .any(|t| t.0 != "Provenance" && member_keys.contains(t))
            {
                out.insert(key(r));
            }
        }
        out
    }

    /// Resources of `resource_type` for which `keep` holds.
    pub fn count_where(&self, resource_type: &str, keep: impl Fn(&Value) -> bool) -> usize {
        self.resources
            .iter()
            .filter(|r| rtype(r) == resource_type && keep(r))
            .count()
    }

    /// Ids of the Provenance that `includeAssociatedData` selects for exported `targets`:
    /// every one with a target among them, or (latest) only the newest per target.
    pub fn associated_provenance(
        &self,
        targets: &BTreeSet<(String, String)>,
        latest: bool,
    ) -> BTreeSet<String> {
        let mut best: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
        let mut all = BTreeSet::new();
        for r in self.resources.iter().filter(|r| rtype(r) == "Provenance") {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let recorded = r["recorded"].as_str().unwrap_or_default().to_string();
            for t in provenance_targets(r)
                .into_iter()
                .filter(|t| targets.contains(t))
            {
                all.insert(id.clone());
                let e = best.entry(t).or_insert((recorded.clone(), id.clone()));
                if (recorded.clone(), id.clone()) > *e {
                    *e = (recorded.clone(), id.clone());
                }
            }
        }
        if latest {
            best.into_values().map(|(_, id)| id).collect()
        } else {
            all
        }
    }

    /// (type, id) of every resource of `resource_type` (optionally only the patients' compartment).
    pub fn keys_of(&self, resource_type: &str) -> BTreeSet<(String, String)> {
        self.resources
            .iter()
            .filter(|r| rtype(r) == resource_type)
            .map(|r| {
                (
                    resource_type.to_string(),
                    r["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// Whether `r` is in the Patient compartment of one of `patients`: the Patient itself, or a
/// resource of a compartment type (never a Group) that references one of them.
fn in_compartments(
    r: &Value,
    patients: &BTreeSet<String>,
    compartment_types: &BTreeSet<String>,
) -> bool {
    let t = rtype(r);
    if t == "Patient" {
        return patients.contains(r["id"].as_str().unwrap_or_default());
    }
    t != "Group"
        && compartment_types.contains(t)
        && refs(r)
            .iter()
            .any(|(rt, rid)| rt == "Patient" && patients.contains(rid))
}

/// A Provenance's `target` references as (type, id).
pub fn provenance_targets(r: &Value) -> Vec<(String, String)> {
    r["target"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["reference"].as_str())
                .filter_map(|s| s.split_once('/'))
                .map(|(t, i)| (t.to_string(), i.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn rtype(r: &Value) -> &str {
    r["resourceType"].as_str().unwrap_or_default()
}

/// Every relative `Type/id` reference in a resource.
pub fn refs(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    if k == "reference" {
                        if let Some((t, id)) = c.as_str().and_then(|s| s.split_once('/')) {
                            out.push((t.to_string(), id.to_string()));
                        }
                    } else {
                        walk(c, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Types with at least one param in the R4 Patient CompartmentDefinition, read from the
/// official definition: ../shared/fhir/r4 when present (and not hidden by `TEST_WITHOUT_SHARED`),
/// else the full R4 definitions scripts/test.sh fetches (`FHIR_R4_DEFINITIONS`), else the
/// generated table (which `infra/gen_compartment.py --check` compares with those definitions).
/// All three give the same set.
pub fn compartment_types() -> BTreeSet<String> {
    let from_definition = |v: &Value| -> BTreeSet<String> {
        v["resource"]
            .as_array()
            .expect("resource")
            .iter()
            .filter(|r| {
                r.get("param")
                    .is_some_and(|p| p.as_array().is_some_and(|a| !a.is_empty()))
            })
            .map(|r| r["code"].as_str().expect("code").to_string())
            .collect()
    };
    if let Some(dir) = crate::shared_dir("fhir/r4") {
        let text = std::fs::read_to_string(dir.join("CompartmentDefinition-patient.json"))
            .expect("CompartmentDefinition-patient.json");
        return from_definition(&serde_json::from_str(&text).expect("CompartmentDefinition"));
    }
    if let Some(dir) = std::env::var_os("FHIR_R4_DEFINITIONS").filter(|d| !d.is_empty()) {
        let text = std::fs::read_to_string(Path::new(&dir).join("profiles-resources.json"))
            .expect("FHIR_R4_DEFINITIONS/profiles-resources.json");
        let bundle: Value = serde_json::from_str(&text).expect("profiles-resources.json");
        let def = bundle["entry"]
            .as_array()
            .expect("entry")
            .iter()
            .map(|e| &e["resource"])
            .find(|r| r["resourceType"] == "CompartmentDefinition" && r["code"] == "Patient")
            .expect("Patient CompartmentDefinition in profiles-resources.json");
        return from_definition(def);
    }
    shared::fhir::compartment_table::PATIENT_COMPARTMENT
        .iter()
        .map(|e| e.resource_type.to_string())
        .collect()
}
