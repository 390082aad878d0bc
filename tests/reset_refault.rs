//! After `reset`, allocating the same amount again must not fault pages in again: reset keeps
//! the pages committed and resident (a fresh fault costs about as much as 400 bump allocations).
//!
//! Counts minor page faults with `getrusage(RUSAGE_THREAD)`. This file is its own test binary
//! with a single test, so no other test's faults can land in the count; RUSAGE_THREAD also keeps
//! the harness's own threads out of it.
#![cfg(target_os = "linux")]

use core::alloc::Layout;
use napalloc::PageArena;

/// Minor faults of the calling thread so far.
fn minor_faults() -> u64 {
    // SAFETY: `rusage` is plain data, so all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_THREAD is supported since Linux 2.6.26.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed: {}", std::io::Error::last_os_error());
    usage.ru_minflt as u64
}

/// Bump-allocate `bytes` in blocks of 16..=256 bytes and write into every block, so every page
/// of the pass is touched. Returns the minor faults this caused.
fn pass(arena: &PageArena, bytes: usize) -> u64 {
    let before = minor_faults();
    let mut done = 0;
    let mut i = 0usize;
    while done < bytes {
        let size = 16 + (i * 37) % 241;
        let p = arena.alloc_layout(Layout::from_size_align(size, 16).unwrap()).unwrap();
        // SAFETY: `p` is a fresh block of `size` bytes.
        unsafe { p.as_ptr().write_bytes(i as u8, size) };
        done += size;
        i += 1;
    }
    minor_faults() - before
}

#[test]
fn reset_then_same_amount_again_causes_almost_no_new_faults() {
    // Transparent huge pages would fold 512 faults into one and hide the per-page signal.
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only sets a process flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_THP_DISABLE): {}", std::io::Error::last_os_error());

    const PASS: usize = 64 << 20;
    let pages = (PASS / napalloc::os::page_size()) as u64;
    let mut arena = PageArena::builder().reserve(256 << 20).build().unwrap();

    let first = pass(&arena, PASS);
    let committed = arena.stats().committed;
    assert!(
        first * 10 >= pages * 9,
        "first pass: {first} faults for {pages} fresh pages (expected about one per page)"
    );

    arena.reset();
    let second = pass(&arena, PASS);
    assert_eq!(arena.stats().committed, committed, "the second pass committed nothing new");
    assert!(second * 50 <= pages, "second pass after reset: {second} faults for {pages} pages (first pass: {first})");
}
