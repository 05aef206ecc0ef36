//! Chunk-sized buffers lent to splices only while bytes are in flight, from one pool per process.
//!
//! A splice used to own three buffers of a chunk's size (the socket read, the encoder's output,
//! the stream read) for its whole life: 100 KiB of address space per client connection, and
//! about 23 KiB of resident memory even for a connection that exchanged one small message and
//! then stayed quiet for hours (malloc's headers and the first bytes written touch a page or
//! two of each). Now a splice waits for data holding no buffer at all, takes one from here when
//! a read has bytes to give it, and gives it back as soon as those bytes were handed on. A
//! quiet connection holds none, whatever it carried before.
//!
//! Buffers are lent for microseconds in the common case (read, encode, copy into the stream's
//! send buffer), so a process needs about as many as it has worker threads, plus one per
//! stream whose far side is not draining (that buffer is data in flight). Returned buffers are
//! kept for the next borrower up to [`KEPT`]; beyond that they are freed, so a burst does not
//! leave its high-water mark behind.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use crate::compress::{HEADER, MAX_BODY};

/// Capacity of every buffer: a whole chunk (header and the largest body), and room for a read
/// to look for more without reallocating.
pub const CAPACITY: usize = HEADER + MAX_BODY + 64;

/// Free buffers the pool keeps: enough for a many-core machine's worker threads each holding
/// an input and an output buffer at once, at 37 KiB each at most 2.4 MiB per process.
pub const KEPT: usize = 64;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn free_list() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    // The list is consistent at every instant (push and pop only): a panic elsewhere while it
    // was locked leaves nothing to repair.
    FREE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty buffer of [`CAPACITY`] bytes on loan; it goes back to the pool when dropped.
/// Derefs to the `Vec<u8>` it is, so it is filled and read like one.
#[derive(Debug)]
pub struct ChunkBuffer(Vec<u8>);

impl ChunkBuffer {
    /// Borrows a buffer: a kept one, or a new allocation (not zeroed: only what is written to
    /// it is ever touched).
    pub fn take() -> Self {
        let kept = free_list().pop();
        Self(kept.unwrap_or_else(|| Vec::with_capacity(CAPACITY)))
    }
}

impl Deref for ChunkBuffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for ChunkBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for ChunkBuffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if !worth_keeping(buf.capacity()) {
            return;
        }
        buf.clear();
        let mut free = free_list();
        if free.len() < KEPT {
            free.push(buf);
        }
    }
}

/// A buffer that grew (a caller wrote past a chunk) is not kept: the pool's bound is in bytes
/// as well as in buffers.
fn worth_keeping(capacity: usize) -> bool {
    capacity == CAPACITY
}

/// Buffers the pool keeps now (for tests and the memory report).
pub fn kept() -> usize {
    free_list().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_the_pool_keeps_a_bounded_number() {
        let mut a = ChunkBuffer::take();
        assert!(a.is_empty() && a.capacity() == CAPACITY);
        a.extend_from_slice(b"in flight");
        drop(a);
        let b = ChunkBuffer::take();
        assert!(b.is_empty(), "a returned buffer is cleared");
        drop(b);
        // A burst borrows more than the pool keeps; afterwards only KEPT stay allocated.
        let burst: Vec<ChunkBuffer> = (0..KEPT + 50).map(|_| ChunkBuffer::take()).collect();
        drop(burst);
        assert!(kept() <= KEPT);
        // A buffer that outgrew its capacity is freed, not kept.
        let mut grown = ChunkBuffer::take();
        grown.resize(CAPACITY + 1, 0);
        assert!(!worth_keeping(grown.capacity()));
    }
}
