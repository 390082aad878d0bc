//! `ArenaPool`: checkout/return storms, exhaustion, the trimmer, statistics and their formats.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use napalloc::pool::{ArenaPool, OnExhausted, PoolStats};
use napalloc::{CriticalLevel, Error};
use std::time::{Duration, Instant};

/// Poll `cond` every few milliseconds for at most `limit`; true once it held. (Bounded polling
/// for an effect of a background thread, not a timing assertion: the limit is far beyond what
/// the effect needs.)
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

const PATIENCE: Duration = Duration::from_secs(60);

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

/// Commit at least `bytes` in the region by allocating 4 KiB children of one root, touching each.
fn bloat(r: &napalloc::Region, bytes: usize) -> NonNull<u8> {
    let root = r.alloc(l(64)).unwrap();
    for _ in 0..bytes / 4096 {
        let p = r.alloc_child(root, l(4096)).unwrap();
        // SAFETY: a fresh 4096-byte block.
        unsafe { p.as_ptr().write_bytes(0xA5, 4096) };
    }
    root
}

#[test]
fn storm_no_region_is_shared_and_books_balance() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 3000;
    const MAX: usize = 3; // fewer regions than threads: exhaustion and waiting happen
    let pool = ArenaPool::builder()
        .max_regions(MAX)
        .region_reserve(64 << 20)
        .on_exhausted(OnExhausted::Wait(PATIENCE))
        .build()
        .unwrap();
    // owner[id] = thread + 1 while a thread holds region `id`, else 0
    let owner: Vec<AtomicU32> = (0..MAX).map(|_| AtomicU32::new(0)).collect();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (pool, owner) = (&pool, &owner);
            s.spawn(move || {
                let me = t as u32 + 1;
                for round in 0..ROUNDS {
                    let r = pool.checkout().expect("a wait of a minute always gets a region");
                    let id = r.id() as usize;
                    assert!(id < MAX);
                    assert_eq!(owner[id].swap(me, Ordering::AcqRel), 0, "region {id} handed to two threads");
                    assert_eq!(r.stats().live_blocks, 0, "a checked-out region is empty");
                    let root = r.alloc(l(32)).unwrap();
                    let n = 1 + round % 7;
                    let blocks: Vec<_> = (0..n).map(|i| r.alloc_child(root, l(48 + 16 * i)).unwrap()).collect();
                    for (i, b) in blocks.iter().enumerate() {
                        // SAFETY: each block has at least 48 bytes.
                        unsafe { b.as_ptr().write_bytes(me as u8, 48 + 16 * i) };
                    }
                    std::thread::yield_now();
                    for (i, b) in blocks.iter().enumerate() {
                        // SAFETY: as above; nobody else may have written them.
                        let ok = (0..48 + 16 * i).all(|k| unsafe { *b.as_ptr().add(k) } == me as u8);
                        assert!(ok, "another thread wrote into region {id}");
                    }
                    if round % 2 == 0 {
                        // SAFETY: root is live; nothing is used afterwards.
                        unsafe { r.free(root).unwrap() };
                    } // else: the reset on return frees it
                    assert_eq!(owner[id].swap(0, Ordering::AcqRel), me);
                    drop(r);
                }
            });
        }
    });
    let s = pool.stats();
    let total = (THREADS * ROUNDS) as u64;
    assert_eq!(s.checkouts, total);
    assert_eq!(s.returns, total);
    assert_eq!(s.checked_out(), 0);
    assert!(s.live_regions >= 1 && s.live_regions <= MAX as u64, "{s:?}");
    assert!(s.peak_regions <= MAX as u64);
    assert_eq!(s.idle_regions, s.live_regions, "every region is back");
    assert_eq!(s.total_failures(), 0);
    assert_eq!(s.bad_pointers, 0);
    assert!(s.committed_bytes > 0);
    // the last return of each region had its root freed or not: live bytes are what those held
    assert!(s.live_bytes <= s.peak_live_bytes);
}

#[test]
fn exhausted_fail_mode_fails_at_once_and_recovers() {
    let pool = ArenaPool::builder()
        .max_regions(2)
        .region_reserve(16 << 20)
        .on_exhausted(OnExhausted::Fail)
        .critical_level(CriticalLevel::AppDomain)
        .build()
        .unwrap();
    let a = pool.checkout().unwrap();
    let b = pool.checkout().unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(pool.checkout().unwrap_err(), Error::LimitExceeded);
    let s = pool.stats();
    assert_eq!((s.exhausted, s.failures), (1, [0, 1, 0]), "counted under the pool's level");
    assert_eq!((s.checkouts, s.live_regions, s.checked_out()), (2, 2, 2));
    let id = a.id();
    drop(a);
    let c = pool.checkout().unwrap();
    assert_eq!(c.id(), id, "the returned region is reused, no third one is created");
    assert_eq!(pool.stats().peak_regions, 2);
    drop((b, c));
}

#[test]
fn exhausted_wait_mode_gets_the_returned_region() {
    let pool = ArenaPool::builder()
        .max_regions(1)
        .region_reserve(16 << 20)
        .on_exhausted(OnExhausted::Wait(PATIENCE))
        .build()
        .unwrap();
    let held = pool.checkout().unwrap();
    let id = held.id();
    // a marker block: the waiter must find the region reset
    held.alloc(l(100)).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let r = pool.checkout().expect("the held region comes back");
            (r.id(), r.stats().live_blocks)
        });
        assert!(eventually(PATIENCE, || pool.stats().exhausted == 1), "the waiter found the pool exhausted");
        drop(held);
        let (got, live) = waiter.join().unwrap();
        assert_eq!((got, live), (id, 0), "the same region, reset");
    });
    let s = pool.stats();
    assert_eq!((s.checkouts, s.returns, s.total_failures()), (2, 2, 0));
    assert_eq!(s.live_bytes, 0, "the last return held nothing");
    assert_eq!(s.peak_live_bytes, 100, "the first return held the 100-byte marker");
}

#[test]
fn exhausted_wait_times_out() {
    let pool = ArenaPool::builder()
        .max_regions(1)
        .region_reserve(16 << 20)
        .on_exhausted(OnExhausted::Wait(Duration::from_millis(20)))
        .build()
        .unwrap();
    let _held = pool.checkout().unwrap();
    assert_eq!(pool.checkout().unwrap_err(), Error::LimitExceeded);
    let s = pool.stats();
    assert_eq!((s.exhausted, s.failures[0]), (1, 1));
}

#[test]
fn trimmer_brings_committed_under_retained_after_a_burst() {
    const RETAIN: usize = 256 << 10;
    let pool = ArenaPool::builder()
        .max_regions(4)
        .region_reserve(256 << 20)
        .retained_bytes_per_region(RETAIN)
        .idle_trim_delay(Duration::from_millis(30))
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let r = pool.checkout().unwrap();
                let root = bloat(&r, 16 << 20);
                // SAFETY: root is live.
                unsafe { r.free(root).unwrap() };
            });
        }
    });
    let burst = pool.stats();
    assert!(burst.committed_bytes >= 32 << 20, "{burst:?}");
    assert!(burst.committed_bytes > burst.retained_bytes);
    assert!(
        eventually(PATIENCE, || {
            let s = pool.stats();
            s.committed_bytes <= s.retained_bytes
        }),
        "the trimmer did not trim: {}",
        pool.stats()
    );
    let s = pool.stats();
    assert!(s.trims >= 1 && s.trimmed_bytes >= (32 << 20) - 2 * RETAIN as u64, "{s:?}");
    assert_eq!(s.peak_committed_bytes, burst.peak_committed_bytes);
    // The region's own figure agrees with the pool's books, and it still works.
    let r = pool.checkout().unwrap();
    assert!(r.stats().committed <= RETAIN, "{:?}", r.stats());
    let root = bloat(&r, 1 << 20);
    assert!(r.owns(root));
}

#[test]
fn checked_out_regions_are_never_trimmed() {
    const RETAIN: usize = 128 << 10;
    let pool = ArenaPool::builder()
        .max_regions(2)
        .region_reserve(64 << 20)
        .retained_bytes_per_region(RETAIN)
        .idle_trim_delay(Duration::from_secs(3600))
        .build()
        .unwrap();
    let r = pool.checkout().unwrap();
    let root = bloat(&r, 8 << 20);
    let committed = r.stats().committed;
    assert_eq!(pool.trim_idle(usize::MAX), 0, "nothing is idle");
    pool.trim_now();
    // The trimmer thread answers a TrimNow with one pass; a region created meanwhile is idle
    // and small, so wait for a visible effect of a later message instead: a second region that
    // is bloated, returned and trimmed proves the first pass is over.
    let other = pool.checkout().unwrap();
    bloat(&other, 4 << 20);
    drop(other);
    pool.trim_now();
    assert!(eventually(PATIENCE, || pool.stats().trims >= 1));
    assert_eq!(r.stats().committed, committed, "the checked-out region kept its pages");
    assert!(r.owns(root));
    // SAFETY: every 4 KiB child is still readable and holds what `bloat` wrote.
    unsafe { assert_eq!(*root.as_ptr().add(64 + 100), 0xA5) };
}

#[test]
fn trim_now_ignores_the_delay_and_trim_idle_is_synchronous() {
    const RETAIN: usize = 128 << 10;
    let pool = ArenaPool::builder()
        .max_regions(2)
        .region_reserve(64 << 20)
        .retained_bytes_per_region(RETAIN)
        .idle_trim_delay(Duration::from_secs(3600))
        .build()
        .unwrap();
    {
        let r = pool.checkout().unwrap();
        bloat(&r, 8 << 20);
    }
    assert!(pool.stats().committed_bytes > (8 << 20));
    pool.trim_now();
    assert!(eventually(PATIENCE, || pool.stats().committed_bytes <= RETAIN as u64), "{}", pool.stats());

    // trim_idle: first down to the retained size...
    {
        let r = pool.checkout().unwrap();
        bloat(&r, 4 << 20);
    }
    let before = pool.stats().committed_bytes;
    let freed = pool.trim_idle(1);
    assert!(freed >= (4 << 20) - RETAIN, "{freed}");
    assert_eq!(pool.stats().committed_bytes, before - freed as u64);
    assert!(pool.stats().committed_bytes <= RETAIN as u64);
    // ...then, when more is wanted, below it.
    let freed = pool.trim_idle(usize::MAX);
    assert!(freed > 0 && pool.stats().committed_bytes < RETAIN as u64 / 2, "{freed} {}", pool.stats());
    // The budget form of the hook: works while the pool lives, returns 0 after.
    let hook = pool.idle_trimmer();
    {
        let r = pool.checkout().unwrap();
        bloat(&r, 1 << 20);
    }
    assert!(hook(usize::MAX) > 0);
    drop(pool);
    assert_eq!(hook(usize::MAX), 0);
}

#[test]
fn failures_and_bad_pointers_are_counted() {
    let pool = ArenaPool::builder()
        .max_regions(1)
        .region_reserve(16 << 20)
        .region_limit(256 << 10)
        .critical_level(CriticalLevel::Process)
        .build()
        .unwrap();
    {
        let r = pool.checkout().unwrap();
        let root = r.alloc(l(64)).unwrap();
        assert!(r.alloc_child(root, l(1 << 20)).unwrap_err().is_out_of_memory());
        assert!(r.alloc(l(1 << 20)).unwrap_err().is_out_of_memory());
        let mut x = 0u64;
        // SAFETY: refused without touching memory.
        unsafe {
            assert_eq!(r.free(NonNull::from(&mut x).cast()), Err(Error::ForeignPointer));
            assert_eq!(r.free(root.cast::<u8>().add(16)), Err(Error::NotABlock));
        }
        // a bad parent is not an out-of-memory failure
        assert!(!r.alloc_child(NonNull::from(&mut x).cast(), l(8)).unwrap_err().is_out_of_memory());
    }
    let s = pool.stats();
    assert_eq!(s.failures, [0, 0, 2]);
    assert_eq!(s.bad_pointers, 2, "summed from the region at return");
    {
        let _r = pool.checkout().unwrap();
    }
    assert_eq!(pool.stats().bad_pointers, 2, "added once, not again at the next return");
    let g = PoolStats::global();
    assert!(g.failures[2] >= 2 && g.bad_pointers >= 2 && g.checkouts >= 2, "{g:?}");
}

/// A tiny checker of the Prometheus text exposition format (0.0.4).
fn check_prometheus(text: &str) -> Vec<(String, String, f64)> {
    fn is_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }
    let mut types = std::collections::HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let mut samples = vec![];
    for line in text.lines() {
        assert!(!line.is_empty(), "no empty lines");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "one HELP per metric: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "{line}");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(helped.contains(name), "HELP before TYPE: {line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "counters and only counters end in _total: {line}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "one TYPE per metric: {line}");
            continue;
        }
        assert!(!line.starts_with('#'), "only HELP and TYPE comments: {line}");
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value parses: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels close: {line}"));
                for pair in body.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("label k=v: {line}"));
                    assert!(is_name(k) && !k.starts_with("__"), "{line}");
                    assert!(v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "quoted label value: {line}");
                    assert!(!v[1..v.len() - 1].contains(['"', '\\', '\n']), "{line}");
                }
                (n, body)
            }
            None => (series, ""),
        };
        assert!(is_name(name), "{line}");
        assert!(types.contains_key(name), "TYPE before samples: {line}");
        samples.push((name.to_string(), labels.to_string(), value));
    }
    samples
}

#[test]
fn prometheus_output_is_well_formed_and_agrees_with_the_stats() {
    let pool =
        ArenaPool::builder().max_regions(2).region_reserve(16 << 20).on_exhausted(OnExhausted::Fail).build().unwrap();
    let a = pool.checkout().unwrap();
    let _b = pool.checkout().unwrap();
    assert!(pool.checkout().is_err());
    drop(a);
    let s = pool.stats();
    let text = s.to_prometheus("napalloc_pool");
    let samples = check_prometheus(&text);
    let get = |name: &str, labels: &str| {
        samples.iter().find(|(n, l, _)| n == name && l == labels).map(|x| x.2).unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(get("napalloc_pool_checkouts_total", ""), 2.0);
    assert_eq!(get("napalloc_pool_returns_total", ""), 1.0);
    assert_eq!(get("napalloc_pool_regions", ""), 2.0);
    assert_eq!(get("napalloc_pool_regions_checked_out", ""), 1.0);
    assert_eq!(get("napalloc_pool_exhausted_total", ""), 1.0);
    assert_eq!(get("napalloc_pool_failures_total", "level=\"task\""), 1.0);
    assert_eq!(get("napalloc_pool_failures_total", "level=\"process\""), 0.0);
    assert_eq!(get("napalloc_pool_committed_bytes", ""), s.committed_bytes as f64);
    assert!(samples.len() >= 15);
    // The global figures use the same format.
    check_prometheus(&PoolStats::global().to_prometheus("napalloc_all_pools"));
}

#[test]
fn display_is_a_table_of_the_figures() {
    let pool = ArenaPool::builder().max_regions(2).region_reserve(16 << 20).build().unwrap();
    for _ in 0..7 {
        let r = pool.checkout().unwrap();
        r.alloc(l(100)).unwrap();
    }
    let s = pool.stats();
    let text = s.to_string();
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows.len() >= 10, "{text}");
    let row = |key: &str| rows.iter().find(|r| r.starts_with(key)).unwrap_or_else(|| panic!("{key}: {text}"));
    assert!(row("checkouts (requests)").trim_end().ends_with(" 7"), "{text}");
    assert!(row("regions live / peak").trim_end().ends_with(" 1 / 1"), "{text}");
    assert!(row("failures task / appdomain / process").trim_end().ends_with("0 / 0 / 0"), "{text}");
    assert!(row("committed / peak").contains("KiB"), "{text}");
    assert!(row("live bytes / peak").trim_end().ends_with("100 B / 100 B"), "{text}");
    // every row has the value column in the same place
    let width = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == width), "{text}");
}

#[test]
fn prewarm_creates_regions_up_to_the_maximum() {
    let pool = ArenaPool::builder().max_regions(3).region_reserve(16 << 20).build().unwrap();
    assert_eq!(pool.prewarm(2).unwrap(), 2);
    assert_eq!(pool.stats().live_regions, 2);
    assert_eq!(pool.prewarm(10).unwrap(), 3, "never past the maximum");
    let s = pool.stats();
    assert_eq!((s.live_regions, s.idle_regions, s.checkouts), (3, 3, 0));
    assert!(s.retained_bytes == 3 * pool.config().retained_bytes_per_region as u64);
}

/// A host page source that refuses everything.
#[derive(Debug)]
struct Refuse;

impl napalloc::host::PageSource for Refuse {
    fn reserve(&self, _len: usize, _level: CriticalLevel) -> Result<NonNull<u8>, Error> {
        Err(Error::Host(napalloc::hr::E_OUTOFMEMORY))
    }
    fn commit(&self, _addr: NonNull<u8>, _len: usize, _level: CriticalLevel) -> Result<(), Error> {
        Err(Error::Host(napalloc::hr::E_OUTOFMEMORY))
    }
    fn decommit(&self, _addr: NonNull<u8>, _len: usize) -> Result<(), Error> {
        Ok(())
    }
    fn release(&self, _base: NonNull<u8>, _len: usize) -> Result<(), Error> {
        Ok(())
    }
}

#[test]
fn a_region_that_cannot_be_created_fails_the_checkout_and_frees_its_place() {
    let pool = ArenaPool::builder()
        .max_regions(1)
        .source(napalloc::host::Source::host(std::sync::Arc::new(Refuse)))
        .critical_level(CriticalLevel::AppDomain)
        .on_exhausted(OnExhausted::Fail)
        .build()
        .unwrap();
    for round in 1..=3 {
        assert_eq!(pool.checkout().unwrap_err(), Error::Host(napalloc::hr::E_OUTOFMEMORY));
        let s = pool.stats();
        assert_eq!(s.failures, [0, round, 0]);
        assert_eq!((s.live_regions, s.retained_bytes, s.exhausted), (0, 0, 0), "the place is free again");
    }
}

#[test]
fn a_budget_past_its_soft_limit_trims_idle_regions_first() {
    use napalloc::host::{Budget, Source};
    const MIB: usize = 1 << 20;
    let budget = Budget::new(6 * MIB, 16 * MIB).unwrap();
    let pool = ArenaPool::builder()
        .max_regions(2)
        .region_reserve(64 * MIB)
        .retained_bytes_per_region(256 << 10)
        .idle_trim_delay(Duration::from_secs(3600))
        .source(Source::os().with_budget(budget.clone()))
        .critical_level(CriticalLevel::AppDomain)
        .build()
        .unwrap();
    pool.register_trimmer(&budget);
    // One region bloats to 3 MiB (its arena commits 4 MiB) and goes idle; the timer would not
    // trim it for an hour.
    let idle_id = {
        let r = pool.checkout().unwrap();
        bloat(&r, 3 * MIB);
        r.id()
    };
    assert!(budget.committed() >= 4 * MIB);
    // Hold it, so the next checkout creates a second region, then give it back.
    let busy = {
        let a = pool.checkout().unwrap();
        assert_eq!(a.id(), idle_id);
        let b = pool.checkout().unwrap();
        drop(a);
        b
    };
    // 3 MiB more would pass the 6 MiB soft limit: the budget asks the pool to trim, and the idle
    // region gives its excess back, so the AppDomain-critical commits succeed.
    let root = bloat(&busy, 3 * MIB);
    assert!(busy.owns(root));
    let s = pool.stats();
    assert!(s.trims >= 1 && s.trimmed_bytes >= (3 * MIB) as u64, "{s}");
    assert!(budget.committed() <= 6 * MIB, "{}", budget.committed());
    assert!(budget.stats().trims >= 1);
    assert_eq!(s.total_failures(), 0);
    drop(busy);
    // A pool that is gone trims nothing.
    drop(pool);
    assert_eq!(budget.trim(usize::MAX), 0);
}
