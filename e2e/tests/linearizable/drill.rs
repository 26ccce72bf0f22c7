//! The drill itself: clients on a few registers, a history, its check, and the final
//! reads. Which system it runs against, and its nemesis, are the caller's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_e2e::http_get;
use meridian_testing::linearizable::{
    self, Operation, RegisterInput, RegisterOutput, Verdict, VersionedRegister,
};
use serde_json::{Value, json};

const KEYS: usize = 3;
const CLIENTS: usize = 6;
const RUN: Duration = Duration::from_secs(30);
/// Longer than a write waits for a leader on a zone (10 s) would make every cut-off write
/// hold its client; an answer not in by then is recorded as unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

type Op = Operation<RegisterInput, RegisterOutput>;

/// What the clients saw, times in nanoseconds since `start`.
struct History {
    start: Instant,
    ops: Mutex<Vec<(usize, Op)>>,
    /// Resources whose creation was acknowledged.
    created: Mutex<Vec<String>>,
    /// Creations whose answer never came.
    maybe_created: Mutex<Vec<String>>,
}

impl History {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            ops: Mutex::default(),
            created: Mutex::default(),
            maybe_created: Mutex::default(),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn key_name(key: usize) -> String {
    format!("lin-{key}")
}

/// The register as a resource: its value in a label, on a policy that means the same whatever
/// the value.
fn body(name: &str, value: u64, version: Option<i64>) -> String {
    let mut doc = json!({
        "type": "MeshTimeout",
        "mesh": "default",
        "name": name,
        "labels": {"lin-value": value.to_string()},
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "1s"}}],
        },
    });
    if let Some(version) = version {
        doc["version"] = version.into();
    }
    doc.to_string()
}

fn url(api: &str, name: &str) -> String {
    format!("{api}/meshes/default/meshtimeouts/{name}")
}

/// A small deterministic generator; the seed is printed so a run can be replayed in spirit.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The answer to one operation: `Some` when the server said what happened, `None` when it
/// may or may not have.
async fn perform(
    http: &reqwest::Client,
    api: &str,
    key: usize,
    input: &RegisterInput,
) -> Option<RegisterOutput> {
    let name = key_name(key);
    let (value, version) = match input {
        RegisterInput::Read => {
            let response = http.get(url(api, &name)).send().await.ok()?;
            let status = response.status().as_u16();
            let text = response.text().await.ok()?;
            return match status {
                200 => Some(RegisterOutput::Value(read(&text))),
                // Unavailable (no leader, not confirmed in time): nothing was read.
                500..=599 => None,
                _ => panic!("GET {name}: {status} {text}"),
            };
        }
        RegisterInput::Write(value) => (*value, None),
        RegisterInput::CompareAndSet { expected, value } => (*value, Some(*expected)),
    };
    let response = http
        .put(url(api, &name))
        .header("content-type", "application/json")
        .body(body(&name, value, version))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    match status {
        200 | 201 => {
            // Every value is new, so "unchanged" would mean a write applied twice: one whose
            // first answer was lost inside the zone is sent again, and must be answered as
            // the first time (request ids), not find itself done.
            let answer: Value = serde_json::from_str(&text).expect("json");
            assert_ne!(
                answer["result"], "unchanged",
                "{name}: a write applied again: {text}"
            );
            Some(RegisterOutput::Written(
                answer["version"].as_i64().expect("version"),
            ))
        }
        409 if version.is_some() => Some(RegisterOutput::Conflict),
        // The write may have been committed before the answer was lost.
        500..=599 => None,
        _ => panic!("PUT {name}: {status} {text}"),
    }
}

/// `(value, version)` of a resource as GET shows it.
fn read(text: &str) -> (u64, i64) {
    let doc: Value = serde_json::from_str(text).expect("json");
    let value = doc["labels"]["lin-value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no lin-value label: {doc}"));
    (value, doc["version"].as_i64().expect("version"))
}

async fn client(id: usize, apis: Arc<Vec<String>>, history: Arc<History>, stop: Arc<AtomicBool>, seed: u64) {
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("client");
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut known_version = [1i64; KEYS];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let api = &apis[rng.below(apis.len())];
        let value = ((id as u64 + 1) << 32) | n;
        let roll = rng.below(10);
        if roll == 9 {
            let name = format!("lin-add-{id}-{n}");
            let response = http
                .put(url(api, &name))
                .header("content-type", "application/json")
                .body(body(&name, value, Some(0)))
                .send()
                .await;
            match response.map(|r| r.status().as_u16()) {
                Ok(201) => history.created.lock().expect("lock").push(name),
                Ok(s) if s < 500 => panic!("creating {name}: {s}"),
                _ => {
                    history.maybe_created.lock().expect("lock").push(name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        }
        let key = rng.below(KEYS);
        let input = match roll {
            0..=3 => RegisterInput::Read,
            4..=6 => RegisterInput::Write(value),
            _ => RegisterInput::CompareAndSet {
                expected: known_version[key],
                value,
            },
        };
        let call = history.now();
        let output = perform(&http, api, key, &input).await;
        let answered = history.now();
        if let Some(RegisterOutput::Value((_, v)) | RegisterOutput::Written(v)) = &output {
            known_version[key] = *v;
        }
        if output.is_none() {
            // As a real client would, back off before trying again, rather than pile up
            // thousands of operations that may or may not have happened.
            tokio::time::sleep(Duration::from_millis(100)).await;
            // A read with no answer tells nothing.
            if matches!(input, RegisterInput::Read) {
                continue;
            }
        }
        history.ops.lock().expect("lock").push((
            key,
            Operation {
                client: id,
                input,
                call,
                answer: output.map(|o| (answered, o)),
            },
        ));
    }
}

/// Runs the clients against `apis` for `RUN` while `nemesis` runs on this thread (it is handed
/// a stop flag to watch), then checks the history once `heal` has made every replica whole
/// and reachable. Prints what happened.
pub fn drill(
    system: &str,
    apis: Vec<String>,
    nemesis: impl FnOnce(&AtomicBool) -> Vec<String>,
    heal: impl FnOnce(),
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    let _ = rustls::crypto::ring::default_provider().install_default();
    eprintln!("--- {system}: {CLIENTS} clients on {KEYS} keys for {RUN:?}, seed {seed}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for key in 0..KEYS {
        put_initial(&apis[0], key);
    }
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let apis = Arc::new(apis);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| runtime.spawn(client(id, apis.clone(), history.clone(), stop.clone(), seed)))
        .collect();
    let stop_nemesis = AtomicBool::new(false);
    let events = std::thread::scope(|s| {
        let timer = s.spawn(|| {
            std::thread::sleep(RUN);
            stop_nemesis.store(true, Ordering::Relaxed);
        });
        let events = nemesis(&stop_nemesis);
        timer.join().expect("timer");
        events
    });
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for c in clients {
            c.await.expect("client");
        }
    });
    heal();

    // The last word: every key read through every replica once all is well again.
    let mut ops = std::mem::take(&mut *history.ops.lock().expect("lock"));
    for (i, api) in apis.iter().enumerate() {
        for key in 0..KEYS {
            let call = history.now();
            let (status, text, _) = http_get(&url(api, &key_name(key)));
            assert_eq!(status, 200, "final read of {} from {api}: {text}", key_name(key));
            let answer = Some((history.now(), RegisterOutput::Value(read(&text))));
            ops.push((
                key,
                Operation {
                    client: CLIENTS + i,
                    input: RegisterInput::Read,
                    call,
                    answer,
                },
            ));
        }
    }
    let count = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|(_, o)| f(o)).count();
    eprintln!(
        "{system}: {} operations ({} reads, {} writes, {} compare-and-sets of which {} refused), {} unanswered; nemesis: {}",
        ops.len(),
        count(&|o| matches!(o.input, RegisterInput::Read)),
        count(&|o| matches!(o.input, RegisterInput::Write(_))),
        count(&|o| matches!(o.input, RegisterInput::CompareAndSet { .. })),
        count(&|o| matches!(o.answer, Some((_, RegisterOutput::Conflict)))),
        count(&|o| o.answer.is_none()),
        events.join(", "),
    );
    for key in 0..KEYS {
        let of_key: Vec<Op> = ops
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, o)| o.clone())
            .collect();
        let started = Instant::now();
        let verdict = linearizable::check(&VersionedRegister::new(&of_key), (0, 1), &of_key, 2_000_000_000);
        eprintln!(
            "{system}: {}: {} operations checked in {:.2}s: {verdict:?}",
            key_name(key),
            of_key.len(),
            started.elapsed().as_secs_f64()
        );
        if let Err(Verdict::NotLinearizable { stuck, .. }) = &verdict {
            // The whole history of the key, in call order, for whoever looks into it.
            let mut sorted = of_key.clone();
            sorted.sort_by_key(|o| o.call);
            let file = std::env::temp_dir().join(format!(
                "linearizable-{}-{}.txt",
                key_name(key),
                std::process::id()
            ));
            let lines: Vec<String> = sorted.iter().map(|o| format!("{o:?}")).collect();
            std::fs::write(&file, lines.join("\n")).expect("history file");
            panic!(
                "{system}: {} is not linearizable: no order fits {:?} (history in {})",
                key_name(key),
                of_key[*stuck],
                file.display()
            );
        }
        assert_eq!(verdict, Ok(()), "{system}: {}", key_name(key));
    }

    // Every acknowledged creation is on every replica.
    let created = history.created.lock().expect("lock").clone();
    for api in apis.iter() {
        let listed = list_names(api);
        let missing: Vec<&String> = created.iter().filter(|n| !listed.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{system}: acknowledged creations missing from {api}: {missing:?}"
        );
    }
    let maybe = history.maybe_created.lock().expect("lock").len();
    eprintln!(
        "{system}: all {} acknowledged creations on every replica ({maybe} unanswered)",
        created.len()
    );
}

fn put_initial(api: &str, key: usize) {
    let name = key_name(key);
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data", &body(&name, 0, Some(0)), &url(api, &name)])
        .status()
        .expect("curl");
    assert!(out.success(), "creating {name}");
}

/// Names of every MeshTimeout on `api`.
fn list_names(api: &str) -> std::collections::HashSet<String> {
    let mut names = std::collections::HashSet::new();
    let mut next = Some("/meshes/default/meshtimeouts?size=1000".to_owned());
    while let Some(path) = next {
        let (status, text, _) = http_get(&format!("{api}{path}"));
        assert_eq!(status, 200, "listing: {text}");
        let page: Value = serde_json::from_str(&text).expect("json");
        for item in page["items"].as_array().expect("items") {
            names.insert(item["name"].as_str().expect("name").to_owned());
        }
        next = page["next"].as_str().map(str::to_owned);
    }
    names
}

/// Sleeps `d`, or less if `stop` comes first; whether to go on.
pub fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
