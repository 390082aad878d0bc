//! One seeded fault-injection run across the whole library: regions from a pool, the COM task
//! allocator's exports and the NapUtil functions, all taking their pages from one process-wide
//! host that fails at seeded random points with every host error (E_FAIL included, which puts it
//! in the failed state until it "recovers").
//!
//! Throughout and afterwards:
//! * every block that was handed out is intact (each is filled with a canary pattern of its own
//!   and checked before it is freed, and all of them periodically);
//! * every failed request failed cleanly: NULL from the CoTaskMem exports, `E_OUTOFMEMORY` (and a
//!   NULL out-pointer) from NapUtil, `Err(Error::Host(cause))` from a region, with the cause one the
//!   host returned (or the failed state's own);
//! * the books balance: the task heap's live blocks, live bytes and failed allocations equal a
//!   model of the requests; the host's error counters equal the faults injected; what the budget
//!   holds equals what the host has committed; the host never saw a range it did not hand out;
//! * once the host recovers, every kind of request is served again.
//!
//! `NAPALLOC_FAULT_SEED=n` runs another seed; `NAPALLOC_FAULT_TRACE=1` records every host call,
//! so that a block outside the host's committed pages is reported with the history of its page.
//!
//! Alone in its binary (one `#[test]`): it installs the process-wide host.

mod common;

use common::{FaultySource, Rng, HOST_HRESULTS};
use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;
use core::time::Duration;
use napalloc::ffi::{CoTaskMemAlloc, CoTaskMemFree, CoTaskMemRealloc};
use napalloc::host::{global_budget, reset_host_failure, set_default_host, HostSource, FAILED_SOURCE_HRESULT};
use napalloc::nap::ffi::{
    AllocConnections, AllocCountedString, AllocFixupInfo, FreeConnections, FreeCountedString, FreeFixupInfo,
};
use napalloc::nap::types::{Connections, CountedString, FixupInfo};
use napalloc::{heap, hr, ArenaPool, Error, PooledRegion};
use std::collections::HashSet;
use std::sync::Arc;

const STEPS: usize = if cfg!(miri) { 400 } else { 12_000 };
/// One host call in this many fails while faults are on.
const FAULT_RATE: u64 = 6;

/// A canary byte for block `id`.
fn pattern(id: u64) -> u8 {
    (id.wrapping_mul(0x9E37_79B9) >> 7) as u8 | 1
}

fn fill(p: *mut u8, len: usize, b: u8) {
    // SAFETY: callers pass a live block of at least `len` bytes.
    unsafe { p.write_bytes(b, len) };
}

fn intact(p: *const u8, len: usize, b: u8) -> bool {
    // SAFETY: callers pass a live block of at least `len` bytes.
    unsafe { core::slice::from_raw_parts(p, len) }.iter().all(|&x| x == b)
}

/// A task-heap request that is live: what was allocated, its canary, and what it counts for in
/// the heap's books (blocks, requested bytes).
#[derive(Debug)]
enum Live {
    Mem { p: *mut u8, len: usize, b: u8 },
    Conn { c: *mut Connections },
    Str { s: *mut CountedString, len: usize, b: u8 },
    Fix { f: *mut FixupInfo, n: usize, b: u8 },
}

impl Live {
    fn books(&self) -> (u64, u64) {
        use core::mem::size_of;
        match *self {
            Live::Mem { len, .. } => (1, len as u64),
            Live::Conn { c } => {
                // SAFETY: `c` is a live Connections of ours.
                let n = unsafe { (*c).count } as usize;
                (1 + (n > 0) as u64, (size_of::<Connections>() + n * size_of::<*mut c_void>()) as u64)
            }
            Live::Str { len, .. } => (2, (size_of::<CountedString>() + (len + 1) * 2) as u64),
            Live::Fix { n, .. } => (1 + (n > 0) as u64, (size_of::<FixupInfo>() + n * 4) as u64),
        }
    }

    fn check(&self) -> bool {
        // SAFETY: every pointer here is a live structure of ours.
        unsafe {
            match *self {
                Live::Mem { p, len, b } => intact(p, len, b),
                Live::Conn { c } => {
                    let n = (*c).count as usize;
                    (0..n).all(|i| (*(*c).connections.add(i)).is_null())
                }
                Live::Str { s, len, b } => {
                    (*s).length as usize == len
                        && (0..len).all(|i| *(*s).string.add(i) == u16::from(b))
                        && *(*s).string.add(len) == 0
                }
                Live::Fix { f, n, b } => {
                    (*f).result_codes.count as usize == n
                        && (0..n).all(|i| *(*f).result_codes.results.add(i) == i32::from(b) * 0x0101)
                }
            }
        }
    }

    fn free(self) {
        // SAFETY: each live structure is freed once, by the function that frees its kind.
        unsafe {
            match self {
                Live::Mem { p, .. } => CoTaskMemFree(p.cast()),
                Live::Conn { c } => FreeConnections(c),
                Live::Str { s, .. } => FreeCountedString(s),
                Live::Fix { f, .. } => FreeFixupInfo(f),
            }
        }
    }
}

/// The model of the task heap's books.
#[derive(Debug, Default)]
struct Model {
    live: Vec<Live>,
    failed: u64,
    served: u64,
}

impl Model {
    fn books(&self) -> (u64, u64) {
        self.live.iter().map(Live::books).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

/// A region checked out of the pool, with the blocks allocated in it (pointer, length, canary).
struct Held<'a> {
    region: PooledRegion<'a>,
    blocks: Vec<(NonNull<u8>, usize, u8)>,
}

/// Whether `e` is a clean host failure with a cause the host could have given.
fn host_cause(e: &Error) -> bool {
    matches!(e, Error::Host(h) if HOST_HRESULTS.contains(h) || *h == FAILED_SOURCE_HRESULT)
}

/// Every page of `[p, p + len)` is committed by the host. If not, the host calls that touched the
/// first page that is not are printed (recorded with `NAPALLOC_FAULT_TRACE=1`), step by step.
fn assert_committed(faulty: &FaultySource, p: *const u8, len: usize, step: usize) {
    if faulty.tracker.owns_committed(p, len) {
        return;
    }
    let page = napalloc::os::page_size();
    let start = p as usize & !(page - 1);
    let bad = (start..p as usize + len).step_by(page).find(|&a| !faulty.tracker.owns_committed(a as *const u8, 1));
    if let Some(a) = bad {
        let mut at = 0;
        for &(what, addr, n, ref r) in faulty.events.lock().unwrap().iter() {
            if what == "step" {
                at = addr;
            } else if addr <= a && a < addr + n {
                eprintln!("step {at}: {what} {n:#x} bytes at {addr:#x}: {r:?}");
            }
        }
    }
    panic!("step {step}: {len} bytes at {p:p} are not all in pages the host committed (first: {bad:x?})");
}

fn check_heap_books(m: &Model, failed_before: u64, when: &str) {
    let s = heap::stats();
    assert_eq!((s.live_blocks, s.live_bytes), m.books(), "{when}: live blocks and bytes");
    assert_eq!(s.failed_allocations - failed_before, m.failed, "{when}: failed allocations");
}

#[test]
fn seeded_faults_across_regions_cotaskmem_and_naputil() {
    let seed = std::env::var("NAPALLOC_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_0006);
    let faulty = Arc::new(FaultySource::new(seed, FAULT_RATE));
    faulty.enabled.store(false, Ordering::Relaxed);
    let host = HostSource::new(Arc::clone(&faulty) as _);
    assert!(set_default_host(Some(Arc::clone(&host))).is_none(), "installed before the first allocation");

    // The pool takes its pages from the host too (its default source is the process default).
    let pool = ArenaPool::builder()
        .max_regions(6)
        .region_reserve(if cfg!(miri) { 1 << 20 } else { 16 << 20 })
        .idle_trim_delay(Duration::MAX)
        .build()
        .unwrap();
    // This thread's heap exists before the books are taken (its creation cannot fail: no faults).
    // SAFETY: a fresh block, freed once.
    unsafe { CoTaskMemFree(CoTaskMemAlloc(8)) };
    let failed_before = heap::stats().failed_allocations;
    assert_eq!(heap::stats().live_blocks, 0);

    let mut rng = Rng::new(seed ^ 0xA5A5);
    let mut m = Model::default();
    let mut held: Vec<Held<'_>> = Vec::new();
    let mut next_id = 0u64;
    let mut causes = HashSet::new();
    let mut recoveries = 0u32;
    let mut region_failures = 0u64;
    faulty.enabled.store(true, Ordering::Relaxed);
    faulty.trace.store(std::env::var_os("NAPALLOC_FAULT_TRACE").is_some(), Ordering::Relaxed);

    for step in 0..STEPS {
        next_id += 1;
        let b = pattern(next_id);
        let op = rng.below(100);
        if faulty.trace.load(Ordering::Relaxed) {
            faulty.events.lock().unwrap().push(("step", step, op as usize, Ok(())));
        }
        match op {
            // CoTaskMemAlloc: mostly small, sometimes large enough to need fresh pages.
            0..=29 => {
                let len =
                    if rng.below(8) == 0 { 16_384 + rng.below(200_000) as usize } else { 1 + rng.below(600) as usize };
                let p = CoTaskMemAlloc(len).cast::<u8>();
                if p.is_null() {
                    m.failed += 1;
                } else {
                    assert_eq!(p as usize % 16, 0);
                    assert_committed(&faulty, p, len, step);
                    fill(p, len, b);
                    m.live.push(Live::Mem { p, len, b });
                    m.served += 1;
                }
            }
            // CoTaskMemRealloc of a live block: a failed grow leaves the block as it was.
            30..=37 => {
                let Some(i) = (!m.live.is_empty()).then(|| rng.below(m.live.len() as u64) as usize) else { continue };
                let Live::Mem { p, len, b: old } = m.live[i] else { continue };
                let max = if rng.below(4) == 0 { 300_000 } else { 2_000 };
                let new_len = 1 + rng.below(max) as usize;
                // SAFETY: `p` is a live block of ours; on success it is no longer used.
                let q = unsafe { CoTaskMemRealloc(p.cast(), new_len) }.cast::<u8>();
                if q.is_null() {
                    m.failed += 1;
                    assert!(intact(p, len, old), "step {step}: a failed realloc damaged its block");
                } else {
                    assert_committed(&faulty, q, new_len, step);
                    assert!(intact(q, len.min(new_len), old), "step {step}: realloc lost the contents");
                    fill(q, new_len, b);
                    m.live[i] = Live::Mem { p: q, len: new_len, b };
                }
            }
            // NapUtil allocations: E_OUTOFMEMORY and a NULL out-pointer, or a whole structure.
            38..=51 => {
                let kind = rng.below(3);
                let mut out: *mut c_void = NonNull::dangling().as_ptr();
                let (h, live) = match kind {
                    0 => {
                        let n = rng.below(21) as u16;
                        // SAFETY: `out` is a writable pointer slot.
                        let h = unsafe { AllocConnections(ptr::addr_of_mut!(out).cast(), n) };
                        (h, Live::Conn { c: out.cast() })
                    }
                    1 => {
                        let len = rng.below(1025) as usize;
                        let mut s = vec![u16::from(b); len];
                        s.push(0);
                        // SAFETY: `out` is a writable pointer slot; `s` is NUL-terminated.
                        let h = unsafe { AllocCountedString(ptr::addr_of_mut!(out).cast(), s.as_ptr()) };
                        (h, Live::Str { s: out.cast(), len, b })
                    }
                    _ => {
                        let n = rng.below(1001) as u16;
                        // SAFETY: `out` is a writable pointer slot.
                        let h = unsafe { AllocFixupInfo(ptr::addr_of_mut!(out).cast(), n) };
                        if h == hr::S_OK {
                            let f = out.cast::<FixupInfo>();
                            // SAFETY: a fresh FixupInfo with `n` result codes.
                            unsafe {
                                for i in 0..n as usize {
                                    *(*f).result_codes.results.add(i) = i32::from(b) * 0x0101;
                                }
                            }
                        }
                        (h, Live::Fix { f: out.cast(), n: n as usize, b })
                    }
                };
                if h == hr::S_OK {
                    assert!(live.check(), "step {step}: a fresh NapUtil structure is not as specified");
                    m.live.push(live);
                    m.served += 1;
                } else {
                    assert_eq!(h, hr::E_OUTOFMEMORY, "step {step}: NapUtil failed with {h:#x}");
                    assert!(out.is_null(), "step {step}: a failed NapUtil call left its out-pointer set");
                    m.failed += 1;
                }
            }
            // Free a live task-heap structure, checking its canary first.
            52..=69 => {
                if m.live.is_empty() {
                    continue;
                }
                let i = rng.below(m.live.len() as u64) as usize;
                let l = m.live.swap_remove(i);
                assert!(l.check(), "step {step}: {l:?} was damaged");
                l.free();
            }
            // A request in a pooled region: a root and its embedded blocks.
            70..=84 => {
                if held.len() >= 4 {
                    let i = rng.below(held.len() as u64) as usize;
                    let h = held.swap_remove(i);
                    for &(p, len, b) in &h.blocks {
                        assert!(intact(p.as_ptr(), len, b), "step {step}: a region block was damaged");
                    }
                    drop(h);
                }
                let region = match pool.checkout() {
                    Ok(r) => r,
                    Err(e) => {
                        assert!(host_cause(&e), "step {step}: checkout failed with {e:?}");
                        causes.insert(e);
                        region_failures += 1;
                        continue;
                    }
                };
                let mut h = Held { region, blocks: Vec::new() };
                let max = if rng.below(6) == 0 { 300_000 } else { 512 };
                let root_len = 64 + rng.below(max) as usize;
                match h.region.alloc(Layout::from_size_align(root_len, 8).unwrap()) {
                    Ok(root) => {
                        assert_committed(&faulty, root.as_ptr(), root_len, step);
                        fill(root.as_ptr(), root_len, b);
                        h.blocks.push((root, root_len, b));
                        for k in 0..2 + rng.below(5) {
                            let len = 16 + rng.below(240) as usize;
                            match h.region.alloc_child(root, Layout::from_size_align(len, 8).unwrap()) {
                                Ok(c) => {
                                    assert_committed(&faulty, c.as_ptr(), len, step);
                                    let cb = pattern(next_id * 8 + k);
                                    fill(c.as_ptr(), len, cb);
                                    h.blocks.push((c, len, cb));
                                }
                                Err(e) => {
                                    assert!(host_cause(&e), "step {step}: alloc_child failed with {e:?}");
                                    causes.insert(e);
                                    region_failures += 1;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        assert!(host_cause(&e), "step {step}: alloc failed with {e:?}");
                        causes.insert(e);
                        region_failures += 1;
                    }
                }
                held.push(h);
            }
            // Give memory back: the task heap's and the pool's idle pages (decommits may fail too).
            85..=89 => {
                if rng.below(2) == 0 {
                    heap::heap_minimize();
                } else {
                    pool.trim_idle(usize::MAX);
                }
            }
            // The host recovers from E_FAIL now and then.
            _ => {
                if host.is_failed() {
                    assert_eq!(reset_host_failure(), hr::S_OK);
                    recoveries += 1;
                }
            }
        }
        if step % 1000 == 999 {
            for l in &m.live {
                assert!(l.check(), "step {step}: {l:?} was damaged");
            }
            check_heap_books(&m, failed_before, &format!("step {step}"));
            assert!(faulty.tracker.violations().is_empty(), "{:?}", faulty.tracker.violations());
        }
    }

    // The run exercised what it is meant to.
    for h in HOST_HRESULTS {
        assert!(faulty.injected(h) > 0, "no {h:#x} was injected");
    }
    assert!(m.failed > 0 && m.served > m.failed, "served {} failed {}", m.served, m.failed);
    assert!(region_failures > 0);
    assert!(recoveries > 0, "the host never recovered from E_FAIL");
    check_heap_books(&m, failed_before, "after the run");

    // The host recovers for good.
    faulty.enabled.store(false, Ordering::Relaxed);
    reset_host_failure();
    assert!(!host.is_failed());
    // Every error the host returned is counted, by cause, where it was returned.
    let errors = host.errors();
    for h in HOST_HRESULTS {
        assert_eq!(errors.of(h), faulty.injected(h), "host errors {h:#x}: {errors:?}");
    }
    assert_eq!(errors.count, faulty.injected_total());
    let budget_errors = global_budget().stats().host_errors;
    for h in HOST_HRESULTS {
        // Releases retried after a recovery are not charged to any budget.
        assert!(budget_errors.of(h) <= errors.of(h) && budget_errors.of(h) > 0, "{budget_errors:?}");
    }

    // Serving resumes: every kind of request succeeds.
    for i in 0..50u64 {
        let b = pattern(i);
        let p = CoTaskMemAlloc(100_000).cast::<u8>();
        assert!(!p.is_null());
        fill(p, 100_000, b);
        m.live.push(Live::Mem { p, len: 100_000, b });
        let mut c: *mut Connections = ptr::null_mut();
        // SAFETY: a writable pointer slot.
        assert_eq!(unsafe { AllocConnections(&mut c, 20) }, hr::S_OK);
        m.live.push(Live::Conn { c });
        let r = pool.checkout().expect("the pool serves again");
        let q = r.alloc(Layout::from_size_align(200_000, 8).unwrap()).expect("regions serve again");
        fill(q.as_ptr(), 200_000, b);
        assert!(intact(q.as_ptr(), 200_000, b));
    }
    check_heap_books(&m, failed_before, "after the recovery");

    // Everything handed out is intact; free it all, and the books are empty.
    for l in m.live.drain(..) {
        assert!(l.check(), "{l:?} was damaged");
        l.free();
    }
    for h in held.drain(..) {
        for &(p, len, b) in &h.blocks {
            assert!(intact(p.as_ptr(), len, b), "a region block was damaged");
        }
    }
    drop(held);
    check_heap_books(&m, failed_before, "at the end");
    heap::heap_minimize();
    pool.trim_idle(usize::MAX);
    host.retry_parked();
    assert_eq!(host.parked(), 0);
    // What the budget holds is exactly what the host has committed.
    assert_eq!(global_budget().committed(), faulty.tracker.committed_bytes());
    assert!(faulty.tracker.violations().is_empty(), "{:?}", faulty.tracker.violations());
    drop(pool);
    assert_eq!(global_budget().committed(), faulty.tracker.committed_bytes());
    eprintln!(
        "seed {seed:#x}: {STEPS} steps, {} faults injected, {} task-heap requests served, {} failed, {} region \
         failures, {} recoveries, causes seen in regions: {causes:?}",
        faulty.injected_total(),
        m.served,
        m.failed,
        region_failures,
        recoveries
    );
}
