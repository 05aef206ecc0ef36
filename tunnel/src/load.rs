//! The load of something that carries streams (an agent's session, a gateway's backend), for
//! the least-loaded choices of both binaries: a count of the streams it carries, raised when a
//! stream is given to it and lowered when that stream's [`LoadShare`] is dropped, so that no
//! path out of a stream's task (a clean end, a reset, a panic) can leave the count too high.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Streams carried right now. Clones count the same streams.
#[derive(Debug, Default, Clone)]
pub struct Load {
    streams: Arc<AtomicUsize>,
}

impl Load {
    /// Streams carried right now.
    pub fn get(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Counts one more stream until the returned share is dropped.
    pub fn share(&self) -> LoadShare {
        self.streams.fetch_add(1, Ordering::Relaxed);
        LoadShare { load: self.clone() }
    }
}

/// One stream's part of a [`Load`]; the load drops by one when this is dropped.
#[derive(Debug)]
pub struct LoadShare {
    load: Load,
}

impl Drop for LoadShare {
    fn drop(&mut self) {
        self.load.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_counts_until_it_is_dropped() {
        let load = Load::default();
        let a = load.share();
        let b = load.clone().share();
        assert_eq!(load.get(), 2);
        drop(a);
        assert_eq!(load.get(), 1);
        drop(b);
        assert_eq!(load.get(), 0);
    }
}
