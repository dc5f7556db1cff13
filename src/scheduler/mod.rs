//! Pure scheduling data structures, free of Python so `cargo test` covers them.

pub mod timers;

pub use timers::TimerHeap;
