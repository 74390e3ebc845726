//! The kick-off's `Accept` and `Prefer` headers.

use super::KickoffError;

/// What the `Prefer` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preferences {
    pub lenient: bool,
}

/// Checks the kick-off headers: `Accept: application/fhir+json` (absent, `*/*` and
/// `application/json` are tolerated) and `Prefer: respond-async` (parsed as a list, which may
/// also carry `handling=lenient`).
pub fn check_headers(
    accept: Option<&str>,
    prefer: Option<&str>,
) -> Result<Preferences, KickoffError> {
    if let Some(accept) = accept {
        let ok = accept.split(',').any(|a| {
            let media = a.split(';').next().unwrap_or("").trim();
            matches!(
                media,
                "application/fhir+json" | "application/json" | "*/*" | "application/*" | ""
            )
        });
        if !ok {
            return Err(KickoffError::NotAcceptable(format!(
                "Accept {accept:?} is not supported: the kick-off response is application/fhir+json"
            )));
        }
    }
    let prefs: Vec<String> = prefer
        .unwrap_or("")
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase().replace(' ', ""))
        .collect();
    if !prefs.iter().any(|p| p == "respond-async") {
        return Err(KickoffError::InvalidHeader(
            "the Prefer header must include respond-async".into(),
        ));
    }
    Ok(Preferences {
        lenient: prefs.iter().any(|p| p == "handling=lenient"),
    })
}
