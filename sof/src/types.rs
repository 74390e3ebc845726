//! FHIR type names: primitive and complex data types, R4 resource types, and how the FHIRPath
//! `ofType` test and choice-element suffixes (`valueQuantity`) map onto them.

/// Every R4 resource type, sorted (binary search).
pub(crate) static R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// Whether `name` is an R4 resource type (the default check of [`crate::View::from_json`]).
pub fn is_r4_resource_type(name: &str) -> bool {
    R4_RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// FHIR primitive types (R4, plus R5's integer64).
pub(crate) static PRIMITIVE_TYPES: &[&str] = &[
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
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "xhtml",
];

/// FHIR complex data types (R4 and the R5 additions, so that a choice suffix from either is
/// recognised).
pub(crate) static COMPLEX_TYPES: &[&str] = &[
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "Availability",
    "BackboneElement",
    "CodeableConcept",
    "CodeableReference",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Distance",
    "Dosage",
    "Duration",
    "Element",
    "ElementDefinition",
    "Expression",
    "ExtendedContactDetail",
    "Extension",
    "HumanName",
    "Identifier",
    "MarketingStatus",
    "Meta",
    "MonetaryComponent",
    "Money",
    "MoneyQuantity",
    "Narrative",
    "ParameterDefinition",
    "Period",
    "Population",
    "ProdCharacteristic",
    "ProductShelfLife",
    "Quantity",
    "Range",
    "Ratio",
    "RatioRange",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "SimpleQuantity",
    "SubstanceAmount",
    "Timing",
    "TriggerDefinition",
    "UsageContext",
    "VirtualServiceDetail",
];

/// FHIRPath System types (`System.String`), usable without the namespace.
pub(crate) static SYSTEM_TYPES: &[&str] = &[
    "Boolean", "Date", "DateTime", "Decimal", "Integer", "Quantity", "String", "Time",
];

/// The interned name of a primitive or complex data type.
pub(crate) fn data_type(name: &str) -> Option<&'static str> {
    PRIMITIVE_TYPES
        .iter()
        .chain(COMPLEX_TYPES)
        .find(|t| **t == name)
        .copied()
}

/// The type named by a choice-element suffix: `Quantity` → `Quantity`, `DateTime` → `dateTime`.
pub(crate) fn choice_suffix_type(suffix: &str) -> Option<&'static str> {
    let first = suffix.chars().next()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    if let Some(t) = COMPLEX_TYPES.iter().find(|t| **t == suffix) {
        return Some(t);
    }
    PRIMITIVE_TYPES
        .iter()
        .find(|t| {
            t.len() == suffix.len()
                && t[..1].eq_ignore_ascii_case(&suffix[..1])
                && t[1..] == suffix[1..]
        })
        .copied()
}

/// A type specifier resolved at parse time (`ofType(X)`, `getReferenceKey(X)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TypeSpec {
    /// A FHIR data type (primitive or complex).
    Fhir(&'static str),
    /// A FHIRPath System type.
    System(&'static str),
    /// A resource type (or `Resource`/`DomainResource`).
    Resource(Box<str>),
}

/// Broad class of a FHIR or System type, for static checks and the JSON-kind fallback of
/// `ofType` when an item's type is not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Boolean,
    Integer,
    Decimal,
    String,
    Temporal,
    Complex,
}

pub(crate) fn kind_of(t: &str) -> Kind {
    match t {
        "boolean" | "Boolean" => Kind::Boolean,
        "integer" | "positiveInt" | "unsignedInt" | "integer64" | "Integer" => Kind::Integer,
        "decimal" | "Decimal" => Kind::Decimal,
        "date" | "dateTime" | "instant" | "time" | "Date" | "DateTime" | "Time" => Kind::Temporal,
        _ if PRIMITIVE_TYPES.contains(&t) || t == "String" => Kind::String,
        _ => Kind::Complex,
    }
}

/// FHIR type inheritance among data types: whether a value of type `actual` is a `wanted`.
pub(crate) fn fhir_is_a(actual: &str, wanted: &str) -> bool {
    if actual == wanted {
        return true;
    }
    match wanted {
        "string" => matches!(actual, "code" | "id" | "markdown"),
        "uri" => matches!(actual, "url" | "canonical" | "oid" | "uuid"),
        "integer" => matches!(actual, "positiveInt" | "unsignedInt"),
        "Quantity" => matches!(
            actual,
            "Age" | "Count" | "Distance" | "Duration" | "MoneyQuantity" | "SimpleQuantity"
        ),
        "Element" => true,
        "BackboneElement" => false,
        _ => false,
    }
}

/// The System type a FHIR primitive maps to (`code` → `String`).
pub(crate) fn system_type_of(fhir: &str) -> Option<&'static str> {
    Some(match kind_of(fhir) {
        Kind::Boolean => "Boolean",
        Kind::Integer => "Integer",
        Kind::Decimal => "Decimal",
        Kind::String => "String",
        Kind::Temporal => match fhir {
            "date" | "Date" => "Date",
            "time" | "Time" => "Time",
            _ => "DateTime",
        },
        Kind::Complex if fhir == "Quantity" => "Quantity",
        Kind::Complex => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_sorted() {
        assert!(R4_RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(R4_RESOURCE_TYPES.len(), 145);
        assert!(is_r4_resource_type("Patient"));
        assert!(!is_r4_resource_type("patient"));
    }

    #[test]
    fn choice_suffixes() {
        assert_eq!(choice_suffix_type("Quantity"), Some("Quantity"));
        assert_eq!(choice_suffix_type("DateTime"), Some("dateTime"));
        assert_eq!(choice_suffix_type("Base64Binary"), Some("base64Binary"));
        assert_eq!(choice_suffix_type("Boolean"), Some("boolean"));
        assert_eq!(choice_suffix_type("quantity"), None);
        assert_eq!(choice_suffix_type("Foo"), None);
    }

    #[test]
    fn subtypes() {
        assert!(fhir_is_a("code", "string"));
        assert!(fhir_is_a("Age", "Quantity"));
        assert!(!fhir_is_a("string", "code"));
        assert_eq!(system_type_of("code"), Some("String"));
        assert_eq!(system_type_of("instant"), Some("DateTime"));
    }
}
