//! The event log as a stream ([`Sandbox::events`], [`EventStream::all`]): the newest past
//! events, then each new one as it is recorded, for as long as the stream is read.

use super::Sandbox;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{Event, Store};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the log is looked at for new events.
const EVENT_POLL: Duration = Duration::from_millis(200);

/// Events, oldest first, then new ones as they come.
///
/// ```no_run
/// # async fn demo(sandbox: orchestrator::Sandbox) -> orchestrator::Result<()> {
/// let mut events = sandbox.events(10).await?;
/// while let Some(event) = events.next().await {
///     let event = event?;
///     println!("{} {} {}", event.at, event.reason, event.message);
/// }
/// # Ok(()) }
/// ```
pub struct EventStream {
    events: mpsc::Receiver<Result<Event>>,
}

impl EventStream {
    /// Every object's events under `config`: the newest `history`, then new ones.
    pub async fn all(config: Config, history: usize) -> Result<EventStream> {
        EventStream::open(config, None, history).await
    }

    async fn open(config: Config, object: Option<String>, history: usize) -> Result<EventStream> {
        let db = crate::paths::DataDir::open(&config.data_dir).map_err(|e| Error::io(format!("opening the data directory {}", config.data_dir.display()), e))?.db();
        let (tx, events) = mpsc::channel(64);
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<Result<()>>();
        tokio::task::spawn_blocking(move || {
            let store = match Store::open(&db) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::from(e)));
                    return;
                }
            };
            let start = store.last_event_id().and_then(|last| {
                let past = if history == 0 { Vec::new() } else { store.events(object.as_deref(), history)? };
                Ok((last, past))
            });
            let (mut last, past) = match start {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::from(e)));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            for e in past {
                if tx.blocking_send(Ok(e)).is_err() {
                    return;
                }
            }
            loop {
                std::thread::sleep(EVENT_POLL);
                if tx.is_closed() {
                    return;
                }
                match store.events_after(object.as_deref(), last, 256) {
                    Ok(new) => {
                        for (id, e) in new {
                            last = id;
                            if tx.blocking_send(Ok(e)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Error::from(e)));
                        return;
                    }
                }
            }
        });
        ready.await.map_err(|_| Error::Protocol("the event reader ended".into()))??;
        Ok(EventStream { events })
    }

    /// The next event; None only if the reader ended (after an error it reported).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.events.recv().await
    }
}

impl Sandbox {
    /// This sandbox's events: the newest `history` (0 for none), then new ones as they come.
    pub async fn events(&self, history: usize) -> Result<EventStream> {
        EventStream::open((*self.config).clone(), Some(format!("Sandbox/{}", self.name)), history).await
    }
}
