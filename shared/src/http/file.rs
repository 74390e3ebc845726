//! `GET [base]/$exportfilerequest?_id=…&filename=…`: a redirect to a short-lived presigned URL
//! (S3; to the file's gzip copy when the client sends `Accept-Encoding: gzip`), or the file
//! streamed (local storage; gzip-compressed on the way out when accepted).

use http::{header, HeaderValue, StatusCode};
use uuid::Uuid;

use super::router::Ctx;
use super::{header_str, query_pairs, query_param, ApiError, Body, Request, Response};
use crate::app::AppState;
use crate::service::files::{open_file, OpenedFile};
use crate::storage::{compressible, content_type_of, Download, NDJSON_CONTENT_TYPE};

/// No Accept header, `application/fhir+ndjson` (Firely), `application/ndjson` or `*/*`.
fn accepts_ndjson(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return true };
    accept.split(',').any(|a| {
        matches!(
            a.split(';').next().unwrap_or("").trim(),
            "application/fhir+ndjson" | "application/ndjson" | "*/*" | "application/*" | ""
        )
    })
}

pub async fn download(state: &AppState, req: &Request, ctx: &Ctx) -> Result<Response, ApiError> {
    let pairs = query_pairs(req);
    let id = query_param(&pairs, "_id")
        .and_then(|v| Uuid::parse_str(&v).ok())
        .ok_or_else(|| ApiError::NotFound("no such export file".into()))?;
    let file_name = query_param(&pairs, "filename")
        .ok_or_else(|| ApiError::BadRequest("the filename parameter is required".into()))?;
    let content_type = content_type_of(&file_name);
    let accept = header_str(req, header::ACCEPT);
    let acceptable = if content_type == NDJSON_CONTENT_TYPE {
        accepts_ndjson(accept)
    } else {
        accepts_media(accept, content_type)
    };
    if !acceptable {
        return Err(ApiError::NotAcceptable(format!(
            "this export file is {content_type}"
        )));
    }
    let gzip = compressible(&file_name) && accepts_gzip(header_str(req, header::ACCEPT_ENCODING));
    let OpenedFile {
        download,
        byte_count,
    } = open_file(state, id, &file_name, ctx.client_id(), gzip).await?;
    match download {
        // A store that keeps a gzip copy (S3) sends gzip-accepting clients to it: the copy is
        // stored with `Content-Encoding: gzip`, so their HTTP library inflates it as it arrives.
        Download::Redirect(url) => {
            let mut resp = http::Response::new(Body::Full(bytes::Bytes::new()));
            *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            let h = resp.headers_mut();
            h.insert(
                header::LOCATION,
                HeaderValue::from_str(&url).map_err(|e| ApiError::Internal(Box::new(e)))?,
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            Ok(resp)
        }
        Download::File(path) => {
            let mut resp = http::Response::new(Body::File { path, gzip });
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            if gzip {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            } else if let Ok(v) = HeaderValue::from_str(&byte_count.to_string()) {
                h.insert(header::CONTENT_LENGTH, v);
            }
            Ok(resp)
        }
    }
}

/// Whether `Accept` allows `media` (a view's CSV or Parquet file): absent, `*/*`, its type's
/// wildcard, or the type itself.
fn accepts_media(accept: Option<&str>, media: &str) -> bool {
    let major = media.split('/').next().unwrap_or_default();
    accept.is_none_or(|a| {
        a.split(',').any(|m| {
            let m = m.split(';').next().unwrap_or_default().trim();
            m.is_empty()
                || m == "*/*"
                || m.eq_ignore_ascii_case(media)
                || m.strip_suffix("/*")
                    .is_some_and(|t| t.eq_ignore_ascii_case(major))
        })
    })
}

/// Whether `Accept-Encoding` allows gzip (listed without `q=0`).
fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|v| {
        v.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{accepts_gzip, accepts_ndjson};

    #[test]
    fn gzip_only_when_the_client_accepts_it() {
        assert!(!accepts_gzip(None));
        assert!(accepts_gzip(Some("gzip, deflate, br")));
        assert!(accepts_gzip(Some("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
    }

    #[test]
    fn file_download_accepts_ndjson_or_nothing() {
        assert!(accepts_ndjson(None));
        assert!(accepts_ndjson(Some("application/fhir+ndjson")));
        assert!(accepts_ndjson(Some("application/ndjson")));
        assert!(!accepts_ndjson(Some("application/json")));
        assert!(!accepts_ndjson(Some("text/csv")));
    }
}
