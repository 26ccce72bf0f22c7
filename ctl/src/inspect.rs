//! `meshctl inspect`: what a proxy got and why, which proxies a policy selects, and whether one
//! service may call another.

use meridian_model::{Kind, Scope};

use crate::client::{self, Client, Failure};
use crate::{OutputFormat, output, parse_kind};

/// What `meshctl inspect` was asked about.
pub(crate) enum Inspected {
    Resource { kind: String, name: String },
    Traffic { from: String, to: String },
}

pub(crate) async fn inspect(
    client: &Client,
    what: Inspected,
    mesh: &str,
    output: OutputFormat,
    endpoints: bool,
    rules: bool,
) -> Result<(), Failure> {
    let (kind, name) = match what {
        Inspected::Traffic { from, to } => {
            let query = format!(
                "/meshes/{mesh}/_traffic?from={}&to={}",
                client::encode(&from),
                client::encode(&to)
            );
            return output::show_traffic(&client.get(&query).await?, output);
        }
        Inspected::Resource { kind, name } => (parse_kind(&kind)?, name),
    };
    if kind != Kind::Dataplane {
        if endpoints || rules {
            return Err(Failure::Usage(
                "--endpoints and --rules are for `inspect dataplane`".into(),
            ));
        }
        if kind.scope() != Scope::Mesh || kind == Kind::Secret {
            return Err(Failure::Usage(format!(
                "inspect takes dataplane, traffic or a policy kind, not {kind}"
            )));
        }
        let path = format!("/meshes/{mesh}/{}/{name}/_resources/dataplanes", kind.plural());
        let mut items = Vec::new();
        let mut next = Some(path);
        while let Some(page) = next.take() {
            let answer = client.get(&page).await?;
            items.extend(answer["items"].as_array().into_iter().flatten().cloned());
            next = answer["next"].as_str().map(str::to_owned);
        }
        return output::show_list(Kind::Dataplane, &items, output);
    }
    if rules {
        let answer = client
            .get(&format!("/meshes/{mesh}/dataplanes/{name}/_rules"))
            .await?;
        return output::show_rules(&answer, output);
    }
    let config = client
        .get(&format!("/meshes/{mesh}/dataplanes/{name}/_config"))
        .await?;
    if endpoints {
        return output::show_endpoints(&config["endpoints"], output);
    }
    output::show_inspect(&config, output)
}
