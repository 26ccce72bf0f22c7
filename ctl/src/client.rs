//! A small client of the REST API that turns error bodies into readable failures.

use meridian_model::{Kind, Scope};
use serde_json::Value;

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or arguments, an unreadable file (exit 2).
    Usage(String),
    /// Resources that do not validate (exit 1; nothing was sent).
    Invalid(String),
    /// The server refused or could not be reached (exit 1).
    Server(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Invalid(_) | Failure::Server(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Invalid(m) | Failure::Server(m) => m,
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// The REST path of one resource.
pub fn resource_path(kind: Kind, mesh: &str, name: &str) -> String {
    match kind.scope() {
        Scope::Global => format!("/{}/{name}", kind.plural()),
        Scope::Mesh => format!("/meshes/{mesh}/{}/{name}", kind.plural()),
    }
}

fn list_path(kind: Kind, mesh: Option<&str>) -> String {
    match (kind.scope(), mesh) {
        (Scope::Mesh, Some(mesh)) => format!("/meshes/{mesh}/{}", kind.plural()),
        _ => format!("/{}", kind.plural()),
    }
}

impl Client {
    /// A client; with `trace`, every request carries it as `traceparent`, so the control
    /// plane's spans join the command's trace.
    pub fn traced(base: &str, token: Option<&str>, trace: Option<&str>) -> Result<Self, Failure> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--api-url {base:?} must start with http:// or https://"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Failure::Usage("the token is not valid header text".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(value) = trace.and_then(|t| reqwest::header::HeaderValue::from_str(t).ok()) {
            headers.insert("traceparent", value);
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .default_headers(headers)
            .build()
            .map_err(|e| Failure::Usage(format!("building the HTTP client: {e}")))?;
        Ok(Self { http, base })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Server(format!("cannot reach the control plane at {}: {e}", self.base)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Server(format!("reading the response: {e}")))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let details = body.get("details").and_then(|d| d.as_str()).unwrap_or("");
        let mut message = format!(
            "{} ({status})",
            body.get("title")
                .and_then(|t| t.as_str())
                .unwrap_or("request failed")
        );
        if !details.is_empty() {
            message.push_str(": ");
            message.push_str(details);
        }
        if let Some(causes) = body
            .get("causes")
            .and_then(|c| c.as_array())
            .filter(|c| c.len() > 1)
        {
            for c in causes {
                let field = c.get("field").and_then(|f| f.as_str()).unwrap_or("");
                let msg = c.get("message").and_then(|m| m.as_str()).unwrap_or("");
                message.push_str(&format!("\n  {field}: {msg}"));
            }
        }
        Err(Failure::Server(message))
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// POSTs JSON and returns the answer as text.
    pub async fn post_text(&self, path: &str, body: &Value) -> Result<String, Failure> {
        match self
            .send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?
        {
            Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    }

    pub async fn delete(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }

    /// Every resource of a kind, following pages.
    pub async fn list_all(&self, kind: Kind, mesh: Option<&str>) -> Result<Vec<Value>, Failure> {
        let path = list_path(kind, mesh);
        let mut items = Vec::new();
        loop {
            let page = self
                .get(&format!("{path}?size=1000&offset={}", items.len()))
                .await?;
            let batch = page
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            let total = page.get("total").and_then(|t| t.as_u64()).unwrap_or(0) as usize;
            let done = batch.is_empty();
            items.extend(batch);
            if done || items.len() >= total {
                return Ok(items);
            }
        }
    }
}

/// Percent-encodes a query value (all but RFC 3986's unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
