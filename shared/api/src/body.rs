//! Reading a resource from a request body: JSON or YAML by Content-Type, at most 1 MiB.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use meridian_model::Format;

use super::error::ApiError;

/// The largest body the API reads.
pub const MAX_BODY: usize = 1 << 20;

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
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| too_large())?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|e| ApiError::bad_field("", format!("the body is not UTF-8 text: {e}")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
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
