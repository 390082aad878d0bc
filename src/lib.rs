//! napalloc — a page-reserving arena/region allocator with a side table of embedded pointers,
//! for servers that build and drop many small linked structures per request.
//!
//! # Layers
//! Each layer depends only on the ones below it:
//!
//! ```text
//!  ffi (C ABI: CoTaskMem*, IMalloc, NapUtil)        pool (ArenaPool, trimmer, stats)
//!        |                                              |
//!  nap (NAP structs, Alloc*/Free*)   com (IMalloc)      |
//!        |                               |              |
//!  heap (task heap: per-thread regions, remote frees, request scopes)
//!        |
//!  region (Region: tracked blocks, alloc_child, cascading free, realloc, reset)
//!        |
//!  table (side table: block records, embedded-pointer tree, address lookup)
//!        |
//!  arena (PageArena: reserve, commit on demand, bump, reset, trim)
//!        |
//!  host (Pages: OS or host page source, budget, critical levels)
//!        |
//!  os (Reservation: mmap / VirtualAlloc / heap under Miri)
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]

pub mod arena;
pub mod com;
mod error;
pub mod ffi;
pub mod host;
pub mod nap;
pub mod os;

pub use arena::{ArenaBuilder, ArenaStats, Cursor, PageArena};
pub use error::{hr, Error};
pub use host::{Budget, CriticalLevel, MemoryAvailable, PageSource, Source};
pub mod heap;
pub mod pool;
pub mod region;
mod small;
mod table;

pub use pool::{ArenaPool, OnExhausted, PoolConfig, PoolStats, PooledRegion};
pub use region::{ChildCursor, Region, RegionBuilder, Scrub, Stats};

/// The README's Rust examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
