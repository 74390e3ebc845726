//! R4 resource type names.

use super::compartment_table::{PATIENT_COMPARTMENT, R4_RESOURCE_TYPES};

pub fn is_resource_type(name: &str) -> bool {
    R4_RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// Types that may be in a Patient compartment. `Group` is left out on purpose: Group.member makes
/// every Group that lists a patient a compartment member, and a Group or Patient export must not
/// pull in other Groups (HAPI #3700).
pub fn patient_compartment_types() -> impl Iterator<Item = &'static str> {
    PATIENT_COMPARTMENT
        .iter()
        .map(|e| e.resource_type)
        .filter(|t| *t != "Group")
}

pub fn is_patient_compartment_type(name: &str) -> bool {
    patient_compartment_types().any(|t| t == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_sorted_for_binary_search() {
        assert!(R4_RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(R4_RESOURCE_TYPES.len(), 145);
        assert!(is_resource_type("Observation"));
        assert!(!is_resource_type("observation"));
        assert!(!is_resource_type("Foo"));
    }

    #[test]
    fn compartment_types_follow_the_r4_definition() {
        assert!(is_patient_compartment_type("Observation"));
        assert!(is_patient_compartment_type("Patient"));
        assert!(is_patient_compartment_type("Coverage"));
        assert!(!is_patient_compartment_type("Device"));
        assert!(!is_patient_compartment_type("Organization"));
        assert!(!is_patient_compartment_type("Group"));
        assert_eq!(patient_compartment_types().count(), 65);
    }
}
