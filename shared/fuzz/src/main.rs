//! `cargo xtask fuzz [--seconds N] [--target NAME]`: every target (or one) for a time budget,
//! round robin, inputs mutated from the seeds and from earlier inputs. Prints the cases tried;
//! a panic is a broken property: its input is saved and the run fails.

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use meridian_fuzz::{Edit, mutate, targets};

/// xorshift64*: enough randomness for mutations, and repeatable from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 60u64;
    let mut only: Option<String> = None;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (arg.as_str(), it.next()) {
            ("--seconds", Some(v)) => seconds = v.parse().unwrap_or(seconds),
            ("--target", Some(v)) => only = Some(v.clone()),
            ("--seed", Some(v)) => seed = v.parse().unwrap_or(seed) | 1,
            _ => {
                eprintln!("usage: meridian-fuzz [--seconds N] [--target NAME] [--seed N]");
                return ExitCode::from(2);
            }
        }
    }
    let targets: Vec<_> = targets()
        .into_iter()
        .filter(|t| only.as_deref().is_none_or(|n| n == t.name))
        .collect();
    if targets.is_empty() {
        eprintln!(
            "no such target; targets: {}",
            meridian_fuzz::targets()
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(2);
    }
    // Quiet: the broken property's message is reported once, below.
    std::panic::set_hook(Box::new(|_| {}));
    let crashes_dir = std::path::Path::new("target/fuzz-crashes");
    let mut random = Random(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tried = vec![0u64; targets.len()];
    let mut crashes = 0;
    let mut corpora: Vec<Vec<Vec<u8>>> = targets.iter().map(|t| (t.seeds)()).collect();
    println!(
        "fuzzing {} target(s) for {seconds} s (seed {seed})",
        targets.len()
    );
    while Instant::now() < deadline {
        for (i, target) in targets.iter().enumerate() {
            for _ in 0..64 {
                let corpus = &corpora[i];
                let base = corpus[random.next() as usize % corpus.len()].clone();
                let edits: Vec<Edit> = (0..1 + random.next() % 16)
                    .map(|_| Edit {
                        kind: random.next() as u8,
                        at: random.next() as u32,
                        value: random.next() as u32,
                    })
                    .collect();
                let input = mutate(&base, &edits);
                tried[i] += 1;
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
                match outcome {
                    Ok(()) => {
                        // Keep some inputs to mutate further, so edits compound.
                        if corpora[i].len() < 256 && random.next().is_multiple_of(32) {
                            corpora[i].push(input);
                        }
                    }
                    Err(panic) => {
                        crashes += 1;
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        let _ = std::fs::create_dir_all(crashes_dir);
                        let file = crashes_dir.join(format!("{}-{}.bin", target.name, tried[i]));
                        let _ = std::fs::write(&file, &input);
                        println!(
                            "CRASH {}: {why}\n  input saved to {}",
                            target.name,
                            file.display()
                        );
                    }
                }
            }
        }
    }
    for (target, n) in targets.iter().zip(&tried) {
        println!("{:<16} {n:>10} cases", target.name);
    }
    println!(
        "{:<16} {:>10} cases, {crashes} crash(es)",
        "total",
        tried.iter().sum::<u64>()
    );
    if crashes > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
