//! Reading a resource from a request body: JSON or YAML by Content-Type, at most 1 MiB.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use meridian_model::Format;

use super::error::ApiError;

/// The largest body the API reads.
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send a body: a megabyte a second is slow, but enough.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reading a body, bounded in time: a client sending it a byte at a time is cut off.
async fn within_time<T>(read: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
    tokio::time::timeout(BODY_TIMEOUT, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request timeout",
            format!("the body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )
    })
}

/// The body as text, with the format its Content-Type names (or, without one, the format its
/// first character suggests).
pub async fn read(headers: &HeaderMap, body: Body) -> Result<(String, Format), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let bytes = within_time(axum::body::to_bytes(body, MAX_BODY))
        .await?
        .map_err(|_| too_large())?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|e| ApiError::bad_field("", format!("the body is not UTF-8 text: {e}")))?;
    let mime = mime(headers, "");
    let format = match mime.as_str() {
        "" => {
            if text.trim_start().starts_with('{') {
                Format::Json
            } else {
                Format::Yaml
            }
        }
        m if m == "application/json" || m.ends_with("+json") => Format::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Format::Yaml,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                format!("Content-Type {other:?} is not supported: send application/json or application/yaml"),
            ));
        }
    };
    Ok((text, format))
}

/// The media type a request's Content-Type names (lowercase, no parameters), or `absent`.
fn mime(headers: &HeaderMap, absent: &str) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(absent)
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The largest body of a small JSON request (tokens, membership).
const MAX_SMALL_BODY: usize = 64 << 10;

/// A small JSON request body as `T`: a field that is missing, unknown, repeated or of the
/// wrong type is refused with its path.
pub async fn json<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let mime = mime(headers, "application/json");
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            format!("Content-Type {mime:?} is not supported here: send application/json"),
        ));
    }
    let bytes = within_time(axum::body::to_bytes(body, MAX_SMALL_BODY))
        .await?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                format!("the body is larger than {MAX_SMALL_BODY} bytes"),
            )
        })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ApiError::bad_field(&field, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| ApiError::bad_field("", e.to_string()))?;
    Ok(value)
}
