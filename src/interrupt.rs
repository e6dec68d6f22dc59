//! Ctrl-C (and, for `sluice run`, SIGTERM) as a value the output loops wait on.
//!
//! One listener lives as long as the process. A listener created anew on each
//! pass of an output loop misses every signal that arrives while rows are being
//! written, so a fast query could not be stopped. Here a thread of its own counts
//! signals into a watch channel; a reader remembers the count it has seen, so a
//! signal that arrives between two checks is still there at the next one.

use tokio::sync::watch;

/// Signals received, as seen by one reader.
pub struct Interrupts {
    count: watch::Receiver<u64>,
}

impl Interrupts {
    /// Starts listening for SIGINT, and for SIGTERM too when `terminate` is set
    /// (a shell leaves SIGTERM alone, so it still ends a shell waiting at its
    /// prompt).
    pub fn listen(terminate: bool) -> std::io::Result<Self> {
        let (tx, count) = watch::channel(0u64);
        spawn_listener(tx, terminate)?;
        Ok(Interrupts { count })
    }

    /// Forgets signals that came before now: one sent while nothing ran must
    /// not stop the next statement.
    pub fn clear(&mut self) {
        self.count.borrow_and_update();
    }

    /// Whether a signal came that [`Interrupts::next`] has not yet returned for.
    pub fn pending(&self) -> bool {
        self.count.has_changed().unwrap_or(false)
    }

    /// Waits for the next signal (at once if one is pending). Cancel-safe, so
    /// it can sit in a `select!` loop.
    pub async fn next(&mut self) {
        if self.count.changed().await.is_err() {
            // The listener is gone: no more signals.
            std::future::pending::<()>().await;
        }
    }
}

/// Listens on a thread of its own, with a small runtime of its own: a fast query
/// can keep every worker of the main runtime busy, and a listener among them
/// would then not run until the query paused.
fn spawn_listener(tx: watch::Sender<u64>, terminate: bool) -> std::io::Result<()> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("sluice-signals".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            let mut signals = match Signals::register(terminate) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while signals.recv().await {
                tx.send_modify(|n| *n += 1);
            }
        });
    })?;
    ready.recv().map_err(|_| std::io::Error::other("the signal listener did not start"))?
}

/// The signals that interrupt, as one stream.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn register(terminate: bool) -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = if terminate { Some(signal(SignalKind::terminate())?) } else { None };
        Ok(Signals { interrupt: signal(SignalKind::interrupt())?, terminate })
    }

    /// Waits for the next signal; false once no more can come.
    async fn recv(&mut self) -> bool {
        let terminate = async {
            match self.terminate.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = self.interrupt.recv() => s.is_some(),
            s = terminate => s.is_some(),
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn register(_terminate: bool) -> std::io::Result<Self> {
        Ok(Signals)
    }

    async fn recv(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
