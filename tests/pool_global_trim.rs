//! Pools are charged to the process-wide budget by default, and its default trimmer gives their
//! idle memory back: an `AppDomain`- or `Process`-critical request past the soft limit that fails
//! without the trim succeeds with it. Alone in its binary: it sets the process-wide budget.
// Not under Miri: it commits megabytes.
#![cfg(not(miri))]

use core::alloc::Layout;
use core::time::Duration;
use napalloc::host::{default_source, global_budget, set_budget};
use napalloc::pool::trim_idle_pools;
use napalloc::{heap, hr, ArenaPool, CriticalLevel, Error, PageArena};

const MIB: usize = 1 << 20;

/// Leave `bytes` of committed, idle memory in `pool` (one request that used them, returned).
fn dirty(pool: &ArenaPool, bytes: usize) {
    let r = pool.checkout().unwrap();
    let p = r.alloc(Layout::from_size_align(bytes, 16).unwrap()).unwrap();
    // SAFETY: a fresh block of `bytes` bytes; touch one byte per page so they are really in use.
    unsafe {
        for off in (0..bytes).step_by(4096) {
            p.as_ptr().add(off).write(1);
        }
    }
    drop(r);
    assert!(pool.stats().committed_bytes >= bytes as u64, "{}", pool.stats());
}

#[test]
fn critical_requests_past_the_soft_limit_trim_idle_pool_memory() {
    let pool = ArenaPool::builder()
        .max_regions(1)
        .region_reserve(64 * MIB)
        // no timer: only the budget trims
        .idle_trim_delay(Duration::MAX)
        .build()
        .unwrap();
    assert!(pool.charges(global_budget()), "pools are charged to the global budget by default");
    dirty(&pool, 8 * MIB);
    assert!(global_budget().committed() >= 8 * MIB, "the pool's commits were charged");

    let request = |level| {
        PageArena::builder().reserve(16 * MIB).commit_chunk(MIB).critical_level(level).source(default_source()).build()
    };
    let (task, app, process) = (
        request(CriticalLevel::Task).unwrap(),
        request(CriticalLevel::AppDomain).unwrap(),
        request(CriticalLevel::Process).unwrap(),
    );
    let big = Layout::from_size_align(2 * MIB, 16).unwrap();

    // Soft limit: what is committed now plus 1 MiB; no reserve above it.
    let soft = global_budget().committed() + MIB;
    assert_eq!(set_budget(soft, soft), hr::S_OK);
    let pool_committed = pool.stats().committed_bytes;

    // Task-critical: fails at once, nothing is trimmed.
    assert_eq!(task.alloc_layout(big).unwrap_err(), Error::LimitExceeded);
    assert_eq!(pool.stats().committed_bytes, pool_committed);
    assert_eq!(pool.stats().trims, 0);

    // AppDomain-critical without the trimmer: fails after trimming nothing.
    global_budget().clear_trimmer();
    assert_eq!(app.alloc_layout(big).unwrap_err(), Error::LimitExceeded);
    assert_eq!(pool.stats().trims, 0);
    assert_eq!(pool.stats().committed_bytes, pool_committed);

    // With the default trimmer back: the same request succeeds, paid for by the idle pool.
    global_budget().set_trimmer(Box::new(|want| trim_idle_pools(global_budget(), want)));
    let trims_before = global_budget().stats().trims;
    let p = app.alloc_layout(big).expect("an app-domain request trims idle pool memory and retries");
    // SAFETY: a live 2 MiB block.
    unsafe { p.as_ptr().write_bytes(0xA5, big.size()) };
    assert!(pool.stats().trims >= 1, "{}", pool.stats());
    assert!(pool.stats().committed_bytes < pool_committed, "{}", pool.stats());
    assert_eq!(global_budget().stats().trims, trims_before + 1);
    assert!(global_budget().committed() <= soft);

    // Process-critical, with no reserve to fall back on: the trim alone makes room.
    assert_eq!(set_budget(0, 0), hr::S_OK);
    dirty(&pool, 8 * MIB);
    let soft = global_budget().committed() + MIB;
    assert_eq!(set_budget(soft, soft), hr::S_OK);
    assert_eq!(task.alloc_layout(big).unwrap_err(), Error::LimitExceeded);
    let trims = pool.stats().trims;
    process.alloc_layout(big).expect("a process-critical request trims idle pool memory and retries");
    assert!(pool.stats().trims > trims);
    assert_eq!(global_budget().stats().reserve_uses, 0, "served by the trim, not the reserve");

    // Through the task heap (NapallocAllocCritical's path): Task fails, AppDomain trims the pool.
    assert_eq!(set_budget(0, 0), hr::S_OK);
    dirty(&pool, 8 * MIB);
    let soft = global_budget().committed() + MIB;
    assert_eq!(set_budget(soft, soft), hr::S_OK);
    assert!(heap::alloc_critical(2 * MIB, CriticalLevel::Task).is_none());
    let trims = pool.stats().trims;
    let q = heap::alloc_critical(2 * MIB, CriticalLevel::AppDomain).expect("the heap's request trims the pool");
    assert!(pool.stats().trims > trims);
    // SAFETY: a live task-heap block.
    unsafe { assert!(heap::free(q.as_ptr())) };
    assert!(global_budget().committed() <= soft);
    assert_eq!(set_budget(0, 0), hr::S_OK);
}
