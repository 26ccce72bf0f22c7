//! The admission webhooks zone-cp serves to the Kubernetes API server over HTTPS:
//! - `POST /inject-sidecar` (mutating, Pods on CREATE): the [`inject`] answer as a JSONPatch;
//! - `POST /validate-kuma-io-v1alpha1` (validating, `kuma.io` resources on CREATE and
//!   UPDATE): the model's own parsing and validation, so a refused resource gets the same field
//!   errors `meshctl apply` prints (`spec.from[0].default.action: ...`).
//!
//! Reviews are bounded (4 MiB, well above the API server's own 3 MiB request limit) and every
//! answer echoes the request's uid. A review that cannot be read is answered 400 by the HTTP
//! layer; a pod or resource that cannot be taken is `allowed: false` with a 422 status whose
//! message and causes name the fields.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::{Status, StatusCause, StatusDetails, StatusSummary};
use kube::runtime::reflector::{ObjectRef, Store};
use meridian_model::FieldError;
use serde_json::Value;

use super::inject::{InjectError, InjectorConfig, inject};

/// The largest review read.
pub const MAX_REVIEW_BYTES: usize = 4 << 20;

/// Whether the zone has a mesh (the injector refuses pods of a mesh that does not exist).
pub trait Meshes: Send + Sync {
    fn exists(&self, mesh: &str) -> bool;
}

impl<F: Fn(&str) -> bool + Send + Sync> Meshes for F {
    fn exists(&self, mesh: &str) -> bool {
        self(mesh)
    }
}

#[derive(Clone)]
pub struct Webhooks {
    pub config: Arc<InjectorConfig>,
    /// The cluster's namespaces, kept by a watcher (their labels opt pods in).
    pub namespaces: Store<Namespace>,
    pub meshes: Arc<dyn Meshes>,
}

pub fn router(webhooks: Webhooks) -> Router {
    Router::new()
        .route("/inject-sidecar", post(inject_sidecar))
        .route("/validate-kuma-io-v1alpha1", post(validate))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(webhooks)
}

fn refused(
    response: AdmissionResponse,
    code: u16,
    reason: &str,
    errors: &[FieldError],
    name: &str,
    kind: &str,
) -> AdmissionResponse {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut response = response.deny(&message);
    response.result = Status {
        status: Some(StatusSummary::Failure),
        code,
        message,
        reason: reason.to_owned(),
        details: Some(StatusDetails {
            name: name.to_owned(),
            kind: kind.to_owned(),
            causes: errors
                .iter()
                .map(|e| StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: e.message.clone(),
                    field: e.field.clone(),
                })
                .collect(),
            group: String::new(),
            uid: String::new(),
            retry_after_seconds: 0,
        }),
        ..Default::default()
    };
    response
}

fn unreadable(review: &AdmissionReview<DynamicObject>) -> Json<AdmissionReview<DynamicObject>> {
    let _ = review;
    Json(AdmissionResponse::invalid("the review has no request").into_review())
}

async fn inject_sidecar(
    State(hooks): State<Webhooks>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<Value> {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return Json(encode(
                AdmissionResponse::invalid("the review has no request").into_review(),
            ));
        }
    };
    Json(encode(answer_injection(&hooks, &request).into_review()))
}

/// The review as the API server reads it: Go's `[]byte` patch is a base64 string (kube-rs
/// writes an array of numbers, which only lenient decoders take).
pub fn encode(review: AdmissionReview<DynamicObject>) -> Value {
    use base64::Engine;
    let mut value = serde_json::to_value(review).unwrap_or(Value::Null);
    if let Some(patch) = value.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = patch
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect()
            })
            .unwrap_or_default();
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    value
}

/// The answer to one pod's review.
pub fn answer_injection(hooks: &Webhooks, request: &AdmissionRequest<Pod>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(pod) = request
        .object
        .as_ref()
        .filter(|_| request.operation == Operation::Create)
    else {
        return response;
    };
    let mut pod = pod.clone();
    // A pod made from a template may not carry its namespace yet; the request does.
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace.clone_from(&request.namespace);
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let ns = hooks.namespaces.get(&ObjectRef::new(&namespace));
    let empty = BTreeMap::new();
    let ns_labels = ns
        .as_ref()
        .and_then(|n| n.metadata.labels.as_ref())
        .unwrap_or(&empty);
    let ns_annotations = ns
        .as_ref()
        .and_then(|n| n.metadata.annotations.as_ref())
        .unwrap_or(&empty);
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    match inject(&hooks.config, &pod, ns_labels, ns_annotations, |m| {
        hooks.meshes.exists(m)
    }) {
        Ok(injected) => {
            let (Ok(before), Ok(after)) = (serde_json::to_value(&pod), serde_json::to_value(&injected))
            else {
                return response.deny("the pod could not be encoded");
            };
            let original = request
                .object
                .as_ref()
                .and_then(|p| serde_json::to_value(p).ok())
                .unwrap_or(before);
            let patch = json_patch::diff(&original, &after);
            if patch.0.is_empty() {
                return response;
            }
            match response.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => response.deny(format!("the patch could not be encoded: {e}")),
            }
        }
        Err(InjectError::Invalid(errors)) => refused(response, 422, "Invalid", &errors, &name, "Pod"),
        Err(e @ InjectError::NoMesh(_)) => {
            let errors = [FieldError::new(
                "metadata.labels[\"kuma.io/mesh\"]",
                e.to_string(),
            )];
            refused(response, 422, "Invalid", &errors, &name, "Pod")
        }
    }
}

async fn validate(
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.clone().try_into() {
        Ok(r) => r,
        Err(_) => return unreadable(&review),
    };
    Json(answer_validation(&request).into_review())
}

/// The Kubernetes form of a custom resource as the model reads it: what the API server adds
/// to `metadata` (uid, resourceVersion, managedFields, ...) is dropped, since a resource's
/// version here is the zone's, not the cluster's.
pub fn model_form(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|k, _| matches!(k.as_str(), "name" | "labels"));
    }
    value
}

/// The answer to one `kuma.io` resource's review.
pub fn answer_validation(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if matches!(request.operation, Operation::Delete | Operation::Connect) {
        return response;
    }
    let Some(object) = request.object.as_ref() else {
        return response;
    };
    match meridian_model::from_value(model_form(object)) {
        Ok(_) => response,
        Err(e) => {
            let errors = e.causes();
            refused(
                response,
                422,
                "Invalid",
                &errors,
                object.metadata.name.as_deref().unwrap_or_default(),
                &request.kind.kind,
            )
        }
    }
}

/// The webhooks' TLS certificate and key (PEM), as the API server's webhook configuration
/// trusts them through its `caBundle`.
pub struct WebhookTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Serves the webhooks over HTTPS on `listener` until `stop` changes: at most `cap`
/// connections, each sending its TLS hello in time.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: WebhookTls,
    hooks: Webhooks,
    cap: usize,
    stop: tokio::sync::watch::Receiver<bool>,
    refused: meridian_api::serve::Refused,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let identity = tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem);
    let mut wait = stop.clone();
    tracing::info!(addr = ?listener.local_addr().ok(), "admission webhooks serving (HTTPS)");
    tonic::transport::Server::builder()
        .tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(identity)
                .timeout(meridian_api::serve::FIRST_BYTES_TIMEOUT),
        )
        .context("the webhook TLS certificate and key")?
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(router(hooks)))
        .serve_with_incoming_shutdown(
            meridian_api::serve::grpc_incoming(listener, "webhook", cap, stop, refused),
            async move {
                let _ = wait.changed().await;
            },
        )
        .await
        .context("serving the webhooks")
}
