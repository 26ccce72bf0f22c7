//! One supervisor for every binary's tasks.
//!
//! ```text
//!   critical tasks ─┐   (servers, the reconciler, the sync client: the process is them)
//!   jobs ───────────┼─> JoinSet ──> first failure, or SIGTERM/SIGINT ──> stop signal ──> grace
//! ```
//!
//! A critical task that ends, fails or panics ends the process with an error (non-zero), rather
//! than leaving it to limp on without, say, federation. A job (a retry loop that makes a key or
//! the default mesh, then returns) may end; an error or a panic in one is a bug and ends the
//! process all the same. Every task runs in a span named after it. On the first failure or a
//! signal the supervisor raises the stop signal (a `watch` turning `true`): jobs end there and
//! then; critical tasks watch it and finish what they hold (open requests, streams) within the
//! grace, after which what is left is aborted.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, error, info, info_span};

/// Why a supervised process stopped other than by a signal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Stopped {
    #[error("{task} ended, and the process cannot run without it")]
    Ended { task: &'static str },
    #[error("{task} failed: {error}")]
    Failed { task: &'static str, error: String },
    #[error("{task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
}

/// What a task failed with, as its error displayed itself (tasks' error types differ).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TaskError(String);

/// What a supervised task returns: nothing, or a `Result` whose error says what failed.
pub trait TaskOutput: Send + 'static {
    fn into_result(self) -> Result<(), TaskError>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), TaskError> {
        Ok(())
    }
}

impl<E: Display + Send + 'static> TaskOutput for Result<(), E> {
    fn into_result(self) -> Result<(), TaskError> {
        self.map_err(|e| TaskError(e.to_string()))
    }
}

/// A task spawned elsewhere, as a future for the supervisor: its panic goes on in the caller.
pub async fn joined<T: TaskOutput>(handle: tokio::task::JoinHandle<T>) -> Result<(), TaskError> {
    match handle.await {
        Ok(out) => out.into_result(),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(TaskError(e.to_string())),
    }
}

/// How a task ended, as the supervisor sees it.
enum End {
    Fine,
    Stopped(Stopped),
}

pub struct Supervisor {
    tasks: JoinSet<End>,
    /// The task each of `tasks` is, by its tokio id (to name a panicked one).
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
    stop: watch::Sender<bool>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            names: Default::default(),
            stop: watch::channel(false).0,
        }
    }

    /// The stop signal every task should watch: `true` once the process is stopping.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// A task the process is made of: its end, error or panic ends the process.
    pub fn critical(&mut self, task: &'static str, fut: impl Future<Output: TaskOutput> + Send + 'static) {
        self.spawn(task, true, fut);
    }

    /// A task that may finish; an error or a panic in it still ends the process.
    pub fn job(&mut self, task: &'static str, fut: impl Future<Output: TaskOutput> + Send + 'static) {
        self.spawn(task, false, fut);
    }

    fn spawn(
        &mut self,
        task: &'static str,
        critical: bool,
        fut: impl Future<Output: TaskOutput> + Send + 'static,
    ) {
        let mut stop = self.stop.subscribe();
        let fault = injected_fault(task);
        let handle = self.tasks.spawn(
            async move {
                let outcome = if critical {
                    tokio::select! {
                        out = fut => out.into_result(),
                        () = async {
                            match fault {
                                Some(after) => tokio::time::sleep(after).await,
                                None => std::future::pending().await,
                            }
                        } => panic!("a fault injected into {task} ({FAULT_VAR})"),
                    }
                } else {
                    // A job is a retry loop with nothing to finish: it ends when stopping.
                    tokio::select! {
                        out = fut => out.into_result(),
                        _ = stop.wait_for(|s| *s) => return End::Fine,
                    }
                };
                // Anything ending once the process is stopping is part of stopping.
                if *stop.borrow() {
                    return End::Fine;
                }
                match outcome {
                    Ok(()) if critical => End::Stopped(Stopped::Ended { task }),
                    Ok(()) => End::Fine,
                    Err(TaskError(error)) => End::Stopped(Stopped::Failed { task, error }),
                }
            }
            .instrument(info_span!("task", name = task)),
        );
        self.names.insert(handle.id(), task);
    }

    /// Runs until `signal` resolves (SIGTERM or SIGINT: see [`crate::shutdown_signal`]) or a
    /// task fails; then raises the stop signal and gives the tasks `grace` to end.
    pub async fn run(mut self, signal: impl Future<Output = ()>, grace: Duration) -> Result<(), Stopped> {
        tokio::pin!(signal);
        let outcome = loop {
            tokio::select! {
                () = &mut signal => break Ok(()),
                joined = self.tasks.join_next_with_id() => match joined {
                    None => break Ok(()),
                    Some(Ok((_, End::Fine))) => {}
                    Some(Ok((_, End::Stopped(why)))) => break Err(why),
                    Some(Err(e)) => {
                        let task = self.names.get(&e.id()).copied().unwrap_or("a task");
                        if let Ok(panic) = e.try_into_panic() {
                            break Err(Stopped::Panicked { task, message: panic_message(&*panic) });
                        }
                    }
                },
            }
        };
        if let Err(why) = &outcome {
            error!(error = %why, "stopping");
        }
        self.stop.send_replace(true);
        let ended =
            tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} }).await;
        if ended.is_err() {
            info!(
                left = self.tasks.len(),
                ?grace,
                "tasks still running after the grace period; aborted"
            );
            self.tasks.abort_all();
        }
        outcome
    }
}

/// In debug builds only: `MERIDIAN_FAULT_PANIC_TASK=NAME@MS` makes the critical task `NAME`
/// panic `MS` milliseconds after it starts, so that a test can see a running binary end when
/// one of its critical tasks dies. Release builds ignore it.
const FAULT_VAR: &str = "MERIDIAN_FAULT_PANIC_TASK";

fn injected_fault(task: &str) -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let value = std::env::var(FAULT_VAR).ok()?;
    let (name, ms) = value.rsplit_once('@')?;
    (name == task).then(|| ms.parse().ok().map(Duration::from_millis))?
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const GRACE: Duration = Duration::from_secs(2);

    /// A task that runs until the stop signal, and notes that it saw it.
    fn server(stop: watch::Receiver<bool>, saw_stop: Arc<AtomicBool>) -> impl Future<Output = ()> {
        let mut stop = stop;
        async move {
            let _ = stop.wait_for(|s| *s).await;
            saw_stop.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_panicking_critical_task_stops_the_rest_and_is_named() {
        let mut s = Supervisor::new();
        let saw_stop = Arc::new(AtomicBool::new(false));
        s.critical("server", server(s.stop_signal(), saw_stop.clone()));
        s.critical("sync client", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if true {
                panic!("lost the plot");
            }
        });
        let outcome = s.run(std::future::pending(), GRACE).await;
        assert_eq!(
            outcome,
            Err(Stopped::Panicked {
                task: "sync client",
                message: "lost the plot".into()
            })
        );
        assert!(
            saw_stop.load(Ordering::SeqCst),
            "the other task saw the stop signal"
        );
    }

    #[tokio::test]
    async fn a_critical_task_that_ends_or_fails_stops_the_process() {
        let mut s = Supervisor::new();
        s.critical("reconciler", async {});
        assert_eq!(
            s.run(std::future::pending(), GRACE).await,
            Err(Stopped::Ended { task: "reconciler" })
        );
        let mut s = Supervisor::new();
        s.critical("xDS server", async { Err::<(), _>("address in use") });
        assert_eq!(
            s.run(std::future::pending(), GRACE).await,
            Err(Stopped::Failed {
                task: "xDS server",
                error: "address in use".into()
            })
        );
    }

    #[tokio::test]
    async fn a_job_may_end_but_not_fail() {
        let mut s = Supervisor::new();
        let saw_stop = Arc::new(AtomicBool::new(false));
        s.critical("server", server(s.stop_signal(), saw_stop.clone()));
        s.job("default mesh", async {});
        let signal = tokio::time::sleep(Duration::from_millis(100));
        assert_eq!(s.run(signal, GRACE).await, Ok(()), "a signal stops it cleanly");
        assert!(saw_stop.load(Ordering::SeqCst));

        let mut s = Supervisor::new();
        s.job("signing keys", async { Err::<(), _>("store gone") });
        assert!(matches!(
            s.run(std::future::pending(), GRACE).await,
            Err(Stopped::Failed {
                task: "signing keys",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_job_still_retrying_ends_at_the_stop_without_waiting_for_the_grace() {
        let mut s = Supervisor::new();
        s.job("default mesh", std::future::pending::<()>());
        let started = std::time::Instant::now();
        assert_eq!(s.run(async {}, Duration::from_secs(60)).await, Ok(()));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not held for the grace"
        );
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_stop_is_aborted_after_the_grace() {
        let mut s = Supervisor::new();
        s.critical("stubborn", std::future::pending::<()>());
        let started = std::time::Instant::now();
        let outcome = s.run(async {}, Duration::from_millis(50)).await;
        assert_eq!(outcome, Ok(()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the grace bounds the stop"
        );
    }
}
