//! `meshctl apply`, `get` and `delete`: resources in both YAML forms, checked before anything
//! is written.

use std::io::Read;
use std::path::PathBuf;

use meridian_model::{Format, Kind, ResourceError, Scope, Submission};

use crate::client::{self, Client, Failure};
use crate::{OutputFormat, output, parse_kind};

/// `meshctl convert -f FILE`: every document in today's kinds, in the universal form.
pub(crate) fn convert(file: &str, output: OutputFormat) -> Result<(), Failure> {
    let text = read_input(file)?;
    let docs =
        meridian_model::parse_documents(&text, Format::Yaml).map_err(|e| Failure::Invalid(e.to_string()))?;
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let resource = match meridian_model::from_value(doc.clone()) {
            Ok(s) => s.resource,
            Err(e) => {
                problems.push(format!("{}: {e}", describe(i, doc)));
                continue;
            }
        };
        match meridian_model::policies::legacy::convert_resource(&resource) {
            None => out.push(resource.to_universal()),
            Some(Ok(converted)) => {
                if converted.is_empty() {
                    eprintln!(
                        "{} {:?} converts to nothing: it does what a mesh does without it",
                        resource.kind(),
                        resource.name
                    );
                }
                out.extend(converted.iter().map(|r| r.to_universal()));
            }
            Some(Err(e)) => problems.push(format!("{}: {e}", describe(i, doc))),
        }
    }
    if !problems.is_empty() {
        return Err(Failure::Invalid(format!(
            "cannot convert:\n  {}",
            problems.join("\n  ")
        )));
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()),
        _ => {
            let docs: Vec<String> = out.iter().map(meridian_model::text::to_yaml).collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}

pub(crate) fn read_input(file: &str) -> Result<String, Failure> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("reading standard input: {e}")))?;
        Ok(text)
    } else {
        let path = PathBuf::from(file);
        std::fs::read_to_string(&path).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))
    }
}

/// Describes a document for messages: `document 2 (MeshTrace "x")`.
fn describe(index: usize, doc: &serde_json::Value) -> String {
    let kind = doc
        .get("type")
        .or_else(|| doc.get("kind"))
        .and_then(|v| v.as_str());
    let name = doc
        .get("name")
        .or_else(|| doc.get("metadata").and_then(|m| m.get("name")))
        .and_then(|v| v.as_str());
    match (kind, name) {
        (Some(k), Some(n)) => format!("document {} ({k} {n:?})", index + 1),
        (Some(k), None) => format!("document {} ({k})", index + 1),
        _ => format!("document {}", index + 1),
    }
}

pub(crate) async fn apply(client: &Client, file: &str) -> Result<(), Failure> {
    let text = read_input(file)?;
    let docs =
        meridian_model::parse_documents(&text, Format::Yaml).map_err(|e| Failure::Invalid(e.to_string()))?;
    if docs.is_empty() {
        return Err(Failure::Invalid(format!("{file}: no resources found")));
    }
    let mut submissions: Vec<Submission> = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        match meridian_model::from_value(doc.clone()) {
            Ok(s) => submissions.push(s),
            Err(ResourceError::Invalid(errors)) => {
                for e in errors {
                    problems.push(format!("{}: {e}", describe(i, doc)));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", describe(i, doc))),
        }
    }
    if !problems.is_empty() {
        return Err(Failure::Invalid(format!(
            "nothing was applied:\n  {}",
            problems.join("\n  ")
        )));
    }
    check_meshes(client, &submissions).await?;
    for s in &submissions {
        let r = &s.resource;
        let mut body = r.to_universal();
        if let Some(v) = s.expected_version {
            body["version"] = v.into();
        }
        let result = client
            .put(&client::resource_path(r.kind(), &r.mesh, &r.name), &body)
            .await?;
        let word = result.get("result").and_then(|v| v.as_str()).unwrap_or("applied");
        match r.kind().scope() {
            Scope::Global => println!("{} {:?} {word}", r.kind(), r.name),
            Scope::Mesh => println!("{} {:?} in mesh {:?} {word}", r.kind(), r.name, r.mesh),
        }
        for w in result["warnings"].as_array().into_iter().flatten() {
            eprintln!(
                "warning: {} {:?}: {}",
                r.kind(),
                r.name,
                w.as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Refuses before writing anything when a resource's mesh neither exists nor is created
/// earlier in the same file.
async fn check_meshes(client: &Client, submissions: &[Submission]) -> Result<(), Failure> {
    let mut known: Vec<String> = client
        .list_all(Kind::Mesh, None)
        .await?
        .iter()
        .filter_map(|m| m.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    for s in submissions {
        let r = &s.resource;
        match r.kind().scope() {
            Scope::Global if r.kind() == Kind::Mesh => known.push(r.name.clone()),
            Scope::Global => {}
            Scope::Mesh => {
                if !known.contains(&r.mesh) {
                    return Err(Failure::Invalid(format!(
                        "nothing was applied: {} {:?} is in mesh {:?}, which does not exist",
                        r.kind(),
                        r.name,
                        r.mesh
                    )));
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    mesh: &str,
    output: OutputFormat,
) -> Result<(), Failure> {
    let kind = parse_kind(kind)?;
    match name {
        Some(name) => {
            let item = client.get(&client::resource_path(kind, mesh, name)).await?;
            output::show_one(kind, &item, output)
        }
        None => {
            let mesh = (kind.scope() == Scope::Mesh).then_some(mesh);
            let items = client.list_all(kind, mesh).await?;
            output::show_list(kind, &items, output)
        }
    }
}

pub(crate) async fn delete(
    client: &Client,
    kind: &str,
    name: &str,
    mesh: &str,
    cascade: bool,
) -> Result<(), Failure> {
    let kind = parse_kind(kind)?;
    let mut path = client::resource_path(kind, mesh, name);
    if cascade {
        path.push_str("?cascade=true");
    }
    client.delete(&path).await?;
    match kind.scope() {
        Scope::Global => println!("{kind} {name:?} deleted"),
        Scope::Mesh => println!("{kind} {name:?} in mesh {mesh:?} deleted"),
    }
    Ok(())
}
