//! A file descriptor kept in reserve, so that a client who arrives while the agent is out of
//! descriptors is reset at once instead of waiting unanswered.
//!
//! When the open-files limit is reached, `accept` fails (EMFILE) and the client stays in the
//! listen backlog: its connect succeeded (the kernel completed the handshake), and it waits for
//! an answer until it gives up. Holding one spare descriptor (`/dev/null`) lets the agent close
//! it for a moment, accept that client, reset it, and open the spare again: the client learns
//! at once, and the refusal is counted and logged. The technique is libev's answer to "the
//! special problem of accept()ing when you can't" (libev manual, section "The special problem of
//! accept()ing when you can't").

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// How long accepting the refused client may take. It is in the backlog already, so the
/// accept completes at once; the bound only keeps a vanished client from holding the spare.
const ACCEPT_WAIT: Duration = Duration::from_millis(10);

/// One descriptor held back for refusing clients when every other one is in use.
#[derive(Debug)]
pub struct SpareDescriptor {
    file: Mutex<Option<std::fs::File>>,
}

impl SpareDescriptor {
    /// Opens the spare descriptor.
    pub fn new() -> Self {
        Self {
            file: Mutex::new(Self::open()),
        }
    }

    fn open() -> Option<std::fs::File> {
        std::fs::File::open("/dev/null").ok()
    }

    /// Out of descriptors: frees the spare, accepts the waiting client with `accept`, hands
    /// it to `refuse` (which resets and closes it) and takes the spare back. True if a client
    /// was refused; false if there was no spare to free (the caller backs off and retries).
    pub async fn refuse_waiting_client<S>(
        &self,
        accept: impl Future<Output = std::io::Result<S>>,
        refuse: impl FnOnce(S),
    ) -> bool {
        let spare = self.file.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(spare) = spare else {
            // Lost earlier (another listener is using it, or it could not be reopened): take
            // it now if a descriptor is free; the caller's next accept may then succeed.
            self.restore();
            return false;
        };
        drop(spare);
        let refused = match tokio::time::timeout(ACCEPT_WAIT, accept).await {
            Ok(Ok(client)) => {
                refuse(client);
                true
            }
            _ => false,
        };
        self.restore();
        refused
    }

    /// Opens the spare again if it is not held.
    fn restore(&self) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            *file = Self::open();
        }
    }
}
