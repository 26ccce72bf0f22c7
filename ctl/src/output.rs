//! Printing resources as a table, YAML or JSON.

use meridian_model::{Kind, Scope};
use serde_json::{Value, json};

use crate::OutputFormat;
use crate::client::Failure;

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn print_structured(value: &Value, output: OutputFormat) -> Result<(), Failure> {
    let rendered = match output {
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        _ => serde_yaml::to_string(value).map_err(|e| e.to_string()),
    }
    .map_err(|e| Failure::Server(format!("rendering the output: {e}")))?;
    print!("{rendered}");
    Ok(())
}

fn print_table(kind: Kind, items: &[Value]) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mesh_scoped = kind.scope() == Scope::Mesh;
    let mut header = vec!["NAME", "VERSION", "MODIFIED"];
    if mesh_scoped {
        header.insert(0, "MESH");
    }
    rows.push(header.iter().map(|h| h.to_string()).collect());
    for item in items {
        let mut row = vec![
            text(item, "name"),
            text(item, "version"),
            text(item, "modificationTime"),
        ];
        if mesh_scoped {
            row.insert(0, text(item, "mesh"));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

pub fn show_one(kind: Kind, item: &Value, output: OutputFormat) -> Result<(), Failure> {
    match output {
        OutputFormat::Table => {
            print_table(kind, std::slice::from_ref(item));
            Ok(())
        }
        _ => print_structured(item, output),
    }
}

pub fn show_list(kind: Kind, items: &[Value], output: OutputFormat) -> Result<(), Failure> {
    match output {
        OutputFormat::Table => {
            print_table(kind, items);
            Ok(())
        }
        _ => print_structured(
            &json!({ "total": items.len(), "items": items, "next": null }),
            output,
        ),
    }
}
