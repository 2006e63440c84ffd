//! The lifecycle every service shares: a `CancellationToken` asks for a drain, a `TaskTracker`
//! waits for in-flight work; the first SIGINT/SIGTERM drains, a second one exits at once.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Cancels `token` on the first SIGINT or SIGTERM; exits the process (status 130) on the second.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("signal received: draining (send it again to exit now)");
        token.cancel();
        wait_for_signal().await;
        tracing::error!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for tracked tasks to finish, at most `grace`; returns whether they all did.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    tokio::time::timeout(grace, tracker.wait()).await.is_ok()
}

/// Sets up `tracing` output to stderr, filtered by `RUST_LOG` (default `info`): human-readable
/// lines, or with `RLHF_LOG_FORMAT=json` one JSON object per event (timestamp, level, message
/// and fields), for log collectors. An unknown format is reported and text is used. Colours
/// only when stderr is a terminal.
pub fn init_telemetry() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = std::env::var("RLHF_LOG_FORMAT").unwrap_or_default();
    // Colours only on a terminal: a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format.as_str() {
        "json" => {
            let _ = builder.json().flatten_event(true).try_init();
        }
        "" | "text" => {
            let _ = builder.try_init();
        }
        other => {
            let _ = builder.try_init();
            tracing::warn!("RLHF_LOG_FORMAT `{other}` is not `text` or `json`: using text");
        }
    }
}
