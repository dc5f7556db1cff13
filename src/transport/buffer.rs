//! A transport's write buffer: the bytes `write()` accepted that the kernel
//! did not take yet.  Pure Rust (no Python), covered by `cargo test`.
//!
//! A queue of chunks, oldest first, of two kinds:
//! - `Copied`: small writes are copied into the newest such chunk, so a
//!   bytearray changed after `write()` cannot change what is sent (asyncio
//!   3.11's bytearray buffer semantics) and many small writes leave in one
//!   system call;
//! - `Held`: a large write of an immutable object (`bytes`) is queued by
//!   reference, as asyncio 3.12+ and uvloop queue it: a big write is neither
//!   copied nor doubled in memory.
//!
//! Sent bytes are consumed from the front by moving an offset.  A `Copied`
//! chunk that is appended to while its front is being sent moves its live
//! bytes down only when the dead prefix is at least as large as them, so each
//! byte is moved O(1) times.

use std::collections::VecDeque;

/// Write at least this many bytes of an immutable object, and it is queued by
/// reference instead of copied: above it, the copy (and for big writes the
/// page faults of a fresh allocation) costs more than one more iovec.
pub const HOLD_AT_LEAST: usize = 4096;

/// At most this many chunks are offered to one `writev`.
pub const MAX_SLICES: usize = 64;

enum Chunk<H> {
    Copied(Vec<u8>),
    /// The owner, and where its unsent bytes started when it was queued.
    Held(H, usize),
}

impl<H: AsRef<[u8]>> Chunk<H> {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Copied(v) => v,
            Chunk::Held(owner, start) => owner.as_ref().get(*start..).unwrap_or(&[]),
        }
    }
}

pub struct WriteBuffer<H> {
    chunks: VecDeque<Chunk<H>>,
    /// Bytes of the front chunk already sent.
    sent: usize,
    /// Bytes waiting, in all chunks.
    len: usize,
    /// An emptied `Copied` allocation kept for the next one.
    spare: Vec<u8>,
}

impl<H> Default for WriteBuffer<H> {
    fn default() -> Self {
        WriteBuffer { chunks: VecDeque::new(), sent: 0, len: 0, spare: Vec::new() }
    }
}

impl<H: AsRef<[u8]>> WriteBuffer<H> {
    /// Bytes waiting to be sent.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The waiting bytes, oldest first, as at most `max` slices.
    pub fn slices(&self, max: usize) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().take(max).enumerate().map(|(i, c)| {
            let b = c.bytes();
            if i == 0 {
                b.get(self.sent..).unwrap_or(&[])
            } else {
                b
            }
        })
    }

    /// How many chunks hold the waiting bytes.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Queue a copy of `bytes`.
    pub fn extend(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        let only = self.chunks.len() == 1;
        if let Some(Chunk::Copied(last)) = self.chunks.back_mut() {
            if only && self.sent > 0 && self.sent >= last.len() - self.sent {
                // The front chunk's dead prefix dominates: move the live
                // bytes down before growing.
                last.drain(..self.sent);
                self.sent = 0;
            }
            last.extend_from_slice(bytes);
            return;
        }
        let mut fresh = std::mem::take(&mut self.spare);
        fresh.extend_from_slice(bytes);
        self.chunks.push_back(Chunk::Copied(fresh));
    }

    /// Queue `owner`'s bytes from `start` on, by reference: the owner must
    /// not change them while queued.
    pub fn push_held(&mut self, owner: H, start: usize) {
        let n = owner.as_ref().len().saturating_sub(start);
        if n == 0 {
            return;
        }
        self.len += n;
        self.chunks.push_back(Chunk::Held(owner, start));
    }

    /// Drop the first `n` bytes (they were sent).
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else { break };
            let live = front.bytes().len() - self.sent;
            if n < live {
                self.sent += n;
                return;
            }
            n -= live;
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        self.sent = 0;
        if let Some(Chunk::Copied(mut v)) = self.chunks.pop_front() {
            // A burst may have grown it a lot: do not keep that memory for
            // the rest of a long-lived connection.
            if v.capacity() <= MAX_IDLE_CAPACITY && v.capacity() > self.spare.capacity() {
                v.clear();
                self.spare = v;
            }
        }
    }

    /// Drop everything waiting (and the spare allocation).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.sent = 0;
        self.len = 0;
        self.spare = Vec::new();
    }
}

/// Capacity an emptied buffer may keep for the next writes.
const MAX_IDLE_CAPACITY: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(b: &WriteBuffer<Vec<u8>>) -> Vec<u8> {
        b.slices(usize::MAX).flatten().copied().collect()
    }

    #[test]
    fn keeps_order_across_partial_consumption() {
        let mut b = WriteBuffer::<Vec<u8>>::default();
        assert!(b.is_empty());
        b.extend(b"hello ");
        b.extend(b"world");
        assert_eq!(b.len(), 11);
        b.consume(3);
        assert_eq!(joined(&b), b"lo world");
        b.extend(b"!");
        assert_eq!(joined(&b), b"lo world!");
        b.consume(100);
        assert!(b.is_empty());
        assert_eq!(joined(&b), b"");
    }

    #[test]
    fn compacts_when_the_dead_prefix_dominates() {
        let mut b = WriteBuffer::<Vec<u8>>::default();
        b.extend(&[1u8; 100]);
        b.consume(90);
        b.extend(&[2u8; 5]);
        assert_eq!(b.sent, 0, "moved down before growing");
        let all = joined(&b);
        assert_eq!(all.len(), 15);
        assert_eq!(&all[..10], &[1u8; 10]);
        assert_eq!(&all[10..], &[2u8; 5]);
    }

    #[test]
    fn held_and_copied_chunks_keep_their_order() {
        let mut b = WriteBuffer::<Vec<u8>>::default();
        b.extend(b"ab");
        b.push_held(b"0123456789".to_vec(), 4);
        b.extend(b"cd");
        b.extend(b"ef");
        b.push_held(b"xyz".to_vec(), 3); // nothing left of it: not queued
        assert_eq!(b.len(), 2 + 6 + 4);
        assert_eq!(b.chunk_count(), 3);
        assert_eq!(joined(&b), b"ab456789cdef");
        assert_eq!(b.slices(2).count(), 2);
        b.consume(3);
        assert_eq!(b.slices(1).next(), Some(&b"56789"[..]));
        b.consume(5);
        assert_eq!(joined(&b), b"cdef");
        assert_eq!(b.chunk_count(), 1);
        b.consume(4);
        assert!(b.is_empty());
        assert_eq!(b.chunk_count(), 0);
    }

    #[test]
    fn a_consume_across_several_chunks() {
        let mut b = WriteBuffer::<Vec<u8>>::default();
        b.push_held(vec![1u8; 10], 0);
        b.extend(&[2u8; 10]);
        b.push_held(vec![3u8; 10], 0);
        b.consume(25);
        assert_eq!(joined(&b), vec![3u8; 5]);
        b.consume(5);
        assert!(b.is_empty());
    }

    #[test]
    fn releases_big_allocations_once_drained() {
        let mut b = WriteBuffer::<Vec<u8>>::default();
        b.extend(&vec![0u8; 4 << 20]);
        b.consume(4 << 20);
        assert_eq!(b.spare.capacity(), 0);
        b.extend(b"x");
        b.consume(1);
        assert!(b.spare.capacity() >= 1, "a small allocation is kept for reuse");
        b.extend(b"y");
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.spare.capacity(), 0);
    }
}
