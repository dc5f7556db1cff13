//! A transport's write buffer: the bytes `write()` accepted that the kernel
//! did not take yet.  Pure Rust (no Python), covered by `cargo test`.
//!
//! One contiguous `Vec` with a read offset, as CPython 3.11's bytearray
//! buffer was: appending copies the caller's bytes (so a bytearray changed
//! after `write()` cannot change what is sent), and the front is consumed
//! by moving the offset; the live bytes are moved down only when the dead
//! prefix is at least as large as them, so each byte is moved O(1) times.

#[derive(Default)]
pub struct WriteBuffer {
    data: Vec<u8>,
    start: usize,
}

impl WriteBuffer {
    /// Bytes waiting to be sent.
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The waiting bytes, oldest first.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.len() {
            self.compact();
        }
        self.data.extend_from_slice(bytes);
    }

    /// Drop the first `n` bytes (they were sent).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len());
        self.start += n;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
            // A burst may have grown the buffer a lot: do not keep that
            // memory for the rest of a long-lived connection.
            if self.data.capacity() > MAX_IDLE_CAPACITY {
                self.data = Vec::new();
            }
        }
    }

    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.start = 0;
    }

    fn compact(&mut self) {
        self.data.drain(..self.start);
        self.start = 0;
    }
}

/// Capacity an emptied buffer may keep for the next writes.
const MAX_IDLE_CAPACITY: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_partial_consumption() {
        let mut b = WriteBuffer::default();
        assert!(b.is_empty());
        b.extend(b"hello ");
        b.extend(b"world");
        assert_eq!(b.len(), 11);
        b.consume(3);
        assert_eq!(b.as_slice(), b"lo world");
        b.extend(b"!");
        assert_eq!(b.as_slice(), b"lo world!");
        b.consume(100);
        assert!(b.is_empty());
        assert_eq!(b.as_slice(), b"");
    }

    #[test]
    fn compacts_when_the_dead_prefix_dominates() {
        let mut b = WriteBuffer::default();
        b.extend(&[1u8; 100]);
        b.consume(90);
        b.extend(&[2u8; 5]);
        assert_eq!(b.start, 0, "moved down before growing");
        assert_eq!(b.as_slice().len(), 15);
        assert_eq!(&b.as_slice()[..10], &[1u8; 10]);
        assert_eq!(&b.as_slice()[10..], &[2u8; 5]);
    }

    #[test]
    fn releases_big_allocations_once_drained() {
        let mut b = WriteBuffer::default();
        b.extend(&vec![0u8; 4 << 20]);
        b.consume(4 << 20);
        assert_eq!(b.data.capacity(), 0);
        b.extend(b"x");
        b.clear();
        assert!(b.is_empty());
    }
}
