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
        _ => Ok(meridian_model::text::to_yaml(value)),
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

/// `meshctl inspect dataplane`: the proxy's connection state, then each resource.
/// `inspect dataplane NAME --endpoints`: per cluster, each endpoint with zone, priority,
/// weight and health.
pub fn show_endpoints(endpoints: &Value, output: OutputFormat) -> Result<(), Failure> {
    if output != OutputFormat::Table {
        return print_structured(endpoints, output);
    }
    let mut rows = vec![[
        "CLUSTER".to_owned(),
        "ENDPOINT".into(),
        "ZONE".into(),
        "PRIORITY".into(),
        "WEIGHT".into(),
        "HEALTH".into(),
    ]];
    for (cluster, items) in endpoints.as_object().into_iter().flatten() {
        for e in items.as_array().into_iter().flatten() {
            rows.push([
                cluster.clone(),
                text(e, "address"),
                text(e, "zone"),
                e["priority"].to_string(),
                e["weight"].to_string(),
                text(e, "health"),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

pub fn show_inspect(config: &Value, output: OutputFormat) -> Result<(), Failure> {
    if output != OutputFormat::Table {
        return print_structured(config, output);
    }
    let connected = if config["connected"] == true {
        format!("connected since {}", text(config, "connectedSince"))
    } else {
        format!("disconnected (since {})", text(config, "disconnectedAt"))
    };
    println!("proxy      {}", text(config, "proxy"));
    println!("state      {connected}");
    let acked: Vec<String> = config["acked"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(t, v)| format!("{t} {}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "last ACK   {}",
        if acked.is_empty() {
            "-".into()
        } else {
            acked.join(", ")
        }
    );
    println!("NACKs      {}", config["nacks"]);
    match config.get("lastNack").filter(|n| !n.is_null()) {
        Some(n) => println!(
            "last NACK  {} at {}: {}",
            text(n, "type"),
            text(n, "at"),
            text(n, "message")
        ),
        None => println!("last NACK  -"),
    }
    println!();
    let mut rows = vec![("TYPE".to_owned(), "NAME".to_owned(), "VERSION".to_owned())];
    for (kind, items) in config["resources"].as_object().into_iter().flatten() {
        for (name, item) in items.as_object().into_iter().flatten() {
            rows.push((kind.clone(), name.clone(), text(item, "version")));
        }
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (t, n, v) in rows {
        println!("{t:<w0$}   {n:<w1$}   {v}");
    }
    Ok(())
}

/// A conf as `field=value` pairs, nested fields dotted (`http.requestTimeout=2s`).
fn flat(conf: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::String(s) => out.push(format!("{prefix}={s}")),
            other => out.push(format!("{prefix}={other}")),
        }
    }
    let mut out = Vec::new();
    walk("", conf, &mut out);
    out.join(" ")
}

fn names(origin: &Value) -> String {
    let names: Vec<String> = origin
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| text(o, "name"))
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

fn print_rows(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
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

/// `meshctl inspect dataplane NAME --rules`: one row per rule, with the policies it came from
/// (the last one named won where they disagree).
pub fn show_rules(answer: &Value, output: OutputFormat) -> Result<(), Failure> {
    if output != OutputFormat::Table {
        return print_structured(answer, output);
    }
    let mut rows = vec![vec![
        "TYPE".to_owned(),
        "APPLIES TO".into(),
        "CONF".into(),
        "ORIGIN".into(),
    ]];
    let mut warnings = Vec::new();
    for rule in answer["rules"].as_array().into_iter().flatten() {
        let kind = text(rule, "type");
        for to in rule["toRules"].as_array().into_iter().flatten() {
            let target: Vec<String> = to["matchers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| text(m, "value"))
                .collect();
            // MeshHTTPRoute: a row per route, in the order they are tried.
            if let Some(routes) = to["conf"]["routes"].as_array() {
                for (i, r) in routes.iter().enumerate() {
                    let from = names(&r["origin"]);
                    rows.push(vec![
                        kind.clone(),
                        format!("to {} #{i}", target.join(",")),
                        format!("match {} -> {}", flat(&r["match"]), flat(&r["conf"])),
                        if from == "-" { "(catch-all)".into() } else { from },
                    ]);
                }
                continue;
            }
            rows.push(vec![
                kind.clone(),
                format!("to {}", target.join(",")),
                flat(&to["conf"]),
                names(&to["origin"]),
            ]);
        }
        for from in rule["fromRules"].as_array().into_iter().flatten() {
            for r in from["rules"].as_array().into_iter().flatten() {
                rows.push(vec![
                    kind.clone(),
                    format!("inbound {}", from["inbound"]["port"]),
                    access(&r["conf"]),
                    names(&r["origin"]),
                ]);
            }
        }
        if let Some(p) = rule.get("proxyRule").filter(|p| !p.is_null()) {
            rows.push(vec![
                kind.clone(),
                "proxy".into(),
                flat(&p["conf"]),
                names(&p["origin"]),
            ]);
        }
        for w in rule["warnings"].as_array().into_iter().flatten() {
            warnings.push(format!("{kind}: {}", w.as_str().unwrap_or_default()));
        }
    }
    if rows.len() == 1 {
        println!("no policy applies to {}", text(&answer["resource"], "name"));
    } else {
        print_rows(&rows);
    }
    for w in warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// Permissions in words: who is let in, who is kept out.
fn access(conf: &Value) -> String {
    let who = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|w| match w["type"].as_str() {
                Some("Anyone") => "anyone".to_owned(),
                Some("Service") => text(w, "value"),
                Some(t) => format!("{t}:{}", text(w, "value")),
                None => w.to_string(),
            })
            .collect()
    };
    let (allow, deny) = (who(&conf["allow"]), who(&conf["deny"]));
    match (allow.is_empty(), deny.is_empty()) {
        (true, _) => "allow nobody".to_owned(),
        (false, true) => format!("allow {}", allow.join(",")),
        (false, false) => format!("allow {} deny {}", allow.join(","), deny.join(",")),
    }
}

/// `meshctl inspect traffic --from A --to B`: the answer, then each inbound of B.
pub fn show_traffic(answer: &Value, output: OutputFormat) -> Result<(), Failure> {
    if output != OutputFormat::Table {
        return print_structured(answer, output);
    }
    let verdict = if answer["allowed"] == true {
        "allowed"
    } else {
        "denied"
    };
    println!(
        "{} -> {} in mesh {}: {verdict}",
        text(answer, "from"),
        text(answer, "to"),
        text(answer, "mesh")
    );
    if let Some(note) = answer["note"].as_str() {
        println!("note: {note}");
    }
    println!();
    let mut rows = vec![vec![
        "DATAPLANE".to_owned(),
        "PORT".into(),
        "ALLOWED".into(),
        "POLICY".into(),
        "REASON".into(),
    ]];
    for d in answer["destinations"].as_array().into_iter().flatten() {
        let policy = d
            .get("policy")
            .filter(|p| !p.is_null())
            .map_or("-".to_owned(), |p| {
                format!("{}/{}", text(p, "type"), text(p, "name"))
            });
        rows.push(vec![
            text(d, "dataplane"),
            d["port"].to_string(),
            if d["allowed"] == true { "yes" } else { "no" }.into(),
            policy,
            text(d, "reason"),
        ]);
    }
    print_rows(&rows);
    Ok(())
}
