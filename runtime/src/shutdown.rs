//! Graceful shutdown on SIGINT and SIGTERM.

/// Resolves on the first SIGINT or SIGTERM, so the job can stop fetching, drain, flush
/// and commit. A second signal after that exits the process at once with status 130,
/// for the operator who does not want to wait for the drain.
///
/// Must be called inside a tokio runtime. If the handlers cannot be installed, the
/// returned future never resolves and a warning is logged: the process then stops only
/// by being killed, which at-least-once tolerates.
pub async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("could not install signal handlers; graceful shutdown is unavailable");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received: draining in-flight records (signal again to exit now)");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
}
