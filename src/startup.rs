//! What every command's process does first: core dumps off before any key is unwrapped, and the
//! bound on each KMS attempt; and the start-up waits of long-running commands, which a signal
//! ends at once.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use backon::Retryable;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::pipeline::backoff;

/// KMS calls are short; this bounds each attempt.
pub const KMS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps unwrapped keys out of core dumps: the process becomes non-dumpable (no core file, no
/// ptrace attach by other processes of the same user) and its core size limit 0. Called first in
/// `main`, before any key is unwrapped.
#[cfg(target_os = "linux")]
pub fn disable_core_dumps() -> Result<(), nix::Error> {
    use nix::sys::resource::{setrlimit, Resource};
    nix::sys::prctl::set_dumpable(false)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
}

/// A start-up wait that did not end in what it waited for.
#[derive(Debug, thiserror::Error)]
pub enum StartupError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Failed(E),
    #[error("stopped by a signal while waiting for {waiting_for}; last cause: {last_cause}")]
    Interrupted {
        waiting_for: &'static str,
        last_cause: String,
    },
}

/// Runs `attempt` until it succeeds or fails for good, retrying transient failures with the
/// commit path's backoff (eight tries over about half a minute). SIGTERM or SIGINT (`shutdown`) ends the wait
/// at once, with the last failure's cause: Kubernetes allows 30 s between SIGTERM and SIGKILL.
pub async fn retrying<T, E, Fut>(
    shutdown: &CancellationToken,
    waiting_for: &'static str,
    attempt: impl FnMut() -> Fut,
    is_transient: impl FnMut(&E) -> bool,
) -> Result<T, StartupError<E>>
where
    E: std::error::Error + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    let last_cause = Mutex::new(None::<String>);
    let attempts = attempt
        .retry(backoff())
        .when(is_transient)
        .notify(|err: &E, delay| {
            warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "waiting for {waiting_for}; retrying");
            if let Ok(mut last) = last_cause.lock() {
                *last = Some(err.to_string());
            }
        });
    tokio::select! {
        result = attempts => result.map_err(StartupError::Failed),
        () = shutdown.cancelled() => Err(StartupError::Interrupted {
            waiting_for,
            last_cause: last_cause
                .lock()
                .ok()
                .and_then(|mut last| last.take())
                .unwrap_or_else(|| "no answer yet".to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[tokio::test]
    async fn a_signal_ends_a_start_up_wait_with_the_last_cause() {
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let waited = retrying(
            &shutdown,
            "the database",
            || {
                if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    cancel.cancel();
                }
                async { Err::<(), _>(Refused) }
            },
            |_| true,
        )
        .await;
        match waited {
            Err(StartupError::Interrupted {
                waiting_for,
                last_cause,
            }) => {
                assert_eq!(waiting_for, "the database");
                assert_eq!(last_cause, "connection refused");
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_becomes_non_dumpable_without_core_files() {
        use nix::sys::resource::{getrlimit, Resource};
        super::disable_core_dumps().unwrap();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
    }
}
