//! Cross-thread stress test of the task heap, in the manner of mimalloc's `test-stress`.
//!
//! Worker threads allocate blocks and small trees of embedded blocks through `napalloc::heap`,
//! keep some, and pass others to each other through a shared channel; the receiver checks a block,
//! sometimes reallocates it, and frees it (or passes it on). Workers exit after a number of steps
//! and new ones start while the blocks of the old ones are still alive (in the channel and in the
//! hands of other threads), so blocks outlive the threads that allocated them.
//!
//! Every block carries a header (its size, kind and seed) and a pattern derived from its seed;
//! both are checked, together with `heap::size_of` from the checking thread, before every realloc
//! and free. At the end every block is freed and the heap's counters must be back where they
//! started: no block lost, none freed twice, no pointer refused, no allocation failed.
//!
//! The test runs for `NAPALLOC_STRESS_SECS` seconds (default 2; the time only bounds the run, it is
//! never asserted on) and at least `MIN_GENERATIONS` generations of threads. `NAPALLOC_STRESS_SEED`
//! picks the seed (it is printed), `NAPALLOC_STRESS_THREADS` the number of concurrent workers.
//! It uses only the public heap API, so it runs against any implementation of it.
//!
//! This file is its own test binary with a single test, so nothing else touches the process-wide
//! heap while it runs and its counters can be checked exactly.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use napalloc::heap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Steps a worker takes before it exits.
const STEPS_PER_WORKER: usize = if cfg!(miri) { 200 } else { 4_000 };
/// Generations of workers at least (each slot is refilled this many times).
const MIN_GENERATIONS: usize = if cfg!(miri) { 1 } else { 3 };
/// Blocks a worker keeps at most.
const RETAIN_MAX: usize = 200;
/// Capacity of the shared channel.
const CHANNEL_CAP: usize = 4096;

/// Header at the start of every block: `[size: u32, kind: u32, seed: u64]`.
const HEADER: usize = 16;
const KIND_PLAIN: u32 = 0x504c_4149;
const KIND_TREE: u32 = 0x5452_4545;
/// Children of a tree root: their pointers follow the root's header.
const TREE_CHILDREN_MAX: usize = 6;

/// A block in flight. Raw pointers are not `Send`; the heap allows any thread to free or realloc
/// any block, and each `Blk` is owned by exactly one thread at a time.
struct Blk(NonNull<u8>);
// SAFETY: see above: ownership of the block moves with the value.
unsafe impl Send for Blk {}

/// xorshift64*: small, fast and good enough to pick sizes and actions.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Mostly small sizes, sometimes up to 64 KiB (as the NAP structures are).
    fn size(&mut self) -> usize {
        match self.below(100) {
            0..=79 => HEADER + self.below(240),
            80..=97 => HEADER + self.below(4096),
            _ => HEADER + self.below(64 << 10),
        }
    }
}

fn pattern(seed: u64, i: usize) -> u8 {
    (seed as u8) ^ (i as u8) ^ ((seed >> 8) as u8).wrapping_mul((i >> 8) as u8 | 1)
}

/// Write the header and the pattern of `[from, size)` (`from >= HEADER`, or 0 for all).
fn fill(p: NonNull<u8>, size: usize, kind: u32, seed: u64, from: usize) {
    let p = p.as_ptr();
    // SAFETY: `p` is a live 16-aligned block of `size >= HEADER` bytes owned by this thread.
    unsafe {
        p.cast::<u32>().write(size as u32);
        p.add(4).cast::<u32>().write(kind);
        p.add(8).cast::<u64>().write(seed);
        for i in from.max(HEADER)..size {
            p.add(i).write(pattern(seed, i));
        }
    }
}

/// Read the header of a block and check it, the heap's idea of its size and its pattern from
/// `from` on. Returns (size, kind, seed).
fn check(p: NonNull<u8>, from: usize) -> (usize, u32, u64) {
    let q = p.as_ptr();
    // SAFETY: `p` is a live block owned by this thread, at least HEADER bytes long.
    let (size, kind, seed) =
        unsafe { (q.cast::<u32>().read() as usize, q.add(4).cast::<u32>().read(), q.add(8).cast::<u64>().read()) };
    assert!(kind == KIND_PLAIN || kind == KIND_TREE, "block {q:p}: header overwritten (kind {kind:#x})");
    assert_eq!(heap::size_of(q), Some(size), "block {q:p}: the heap's size differs from the header");
    assert_eq!(heap::did_alloc(q), 1, "block {q:p} is not live");
    // A tree root's payload is its child count and child pointers, checked by `check_and_free`.
    let payload_end = if kind == KIND_TREE { HEADER } else { size };
    for i in from.max(HEADER)..payload_end {
        // SAFETY: i < size.
        let got = unsafe { q.add(i).read() };
        assert_eq!(got, pattern(seed, i), "block {q:p} (size {size}, seed {seed:#x}): byte {i} overwritten");
    }
    (size, kind, seed)
}

fn alloc_plain(rng: &mut Rng) -> Blk {
    let size = rng.size();
    let p = heap::alloc(size).expect("the task heap has room");
    assert_eq!(p.as_ptr() as usize % heap::ALIGN, 0);
    fill(p, size, KIND_PLAIN, rng.next(), 0);
    Blk(p)
}

/// A root whose payload holds the pointers of up to `TREE_CHILDREN_MAX` embedded blocks.
fn alloc_tree(rng: &mut Rng) -> Blk {
    let n = 1 + rng.below(TREE_CHILDREN_MAX);
    let size = HEADER + 8 + n * 8;
    let root = heap::alloc(size).expect("the task heap has room");
    let seed = rng.next();
    let r = root.as_ptr();
    // SAFETY: the root has room for the header, a count and n pointers.
    unsafe {
        r.cast::<u32>().write(size as u32);
        r.add(4).cast::<u32>().write(KIND_TREE);
        r.add(8).cast::<u64>().write(seed);
        r.add(HEADER).cast::<u64>().write(n as u64);
    }
    for k in 0..n {
        let csize = HEADER + rng.below(200);
        let c = heap::alloc_child(root, csize).expect("the task heap has room");
        fill(c, csize, KIND_PLAIN, seed ^ k as u64, 0);
        // SAFETY: slot k of the root's pointer array.
        unsafe { r.add(HEADER + 8 + 8 * k).cast::<*mut u8>().write(c.as_ptr()) };
    }
    Blk(root)
}

/// Check a block (and a tree's children) and free it, the way its kind asks.
fn check_and_free(b: Blk, rng: &mut Rng) {
    let (_, kind, seed) = check(b.0, 0);
    let r = b.0.as_ptr();
    if kind == KIND_TREE {
        // SAFETY: a tree root holds a count and that many child pointers after its header.
        let n = unsafe { r.add(HEADER).cast::<u64>().read() } as usize;
        assert!((1..=TREE_CHILDREN_MAX).contains(&n), "tree {r:p}: child count overwritten");
        let children: Vec<*mut u8> =
            // SAFETY: as above.
            (0..n).map(|k| unsafe { r.add(HEADER + 8 + 8 * k).cast::<*mut u8>().read() }).collect();
        for (k, c) in children.iter().enumerate() {
            let (_, ckind, cseed) = check(NonNull::new(*c).expect("child pointer"), 0);
            assert_eq!((ckind, cseed), (KIND_PLAIN, seed ^ k as u64), "tree {r:p}: child {k} is not its own");
        }
        if rng.below(4) == 0 {
            // CoTaskMemFree of the root alone: the children become independent blocks.
            // SAFETY: the root is ours and not used again.
            assert!(unsafe { heap::free(r) }, "free of a live tree root");
            for c in children {
                check(NonNull::new(c).unwrap(), 0);
                // SAFETY: each child is a live block that only this thread knows of now.
                assert!(unsafe { heap::free(c) }, "free of an independent child");
            }
        } else {
            // SAFETY: the root and its embedded blocks are ours and not used again.
            assert!(unsafe { heap::free_tree(r) }, "free_tree of a live tree root");
        }
    } else {
        // SAFETY: the block is ours and not used again.
        assert!(unsafe { heap::free(r) }, "free of a live block");
    }
}

/// Reallocate a plain block on the receiving thread, checking that the contents moved along.
fn realloc_plain(b: Blk, rng: &mut Rng) -> Blk {
    let (size, kind, seed) = check(b.0, 0);
    if kind != KIND_PLAIN {
        return b;
    }
    let new_size = rng.size();
    // SAFETY: the block is ours; the old pointer is not used after this.
    let q = unsafe { heap::realloc(b.0.as_ptr(), new_size) };
    let q = NonNull::new(q).expect("realloc within the heap's room succeeds");
    assert_eq!(q.as_ptr() as usize % heap::ALIGN, 0);
    // The header still says the old size: check the kept part, then rewrite for the new size.
    let kept = size.min(new_size);
    let qp = q.as_ptr();
    for i in HEADER..kept {
        // SAFETY: i < kept <= new_size.
        let got = unsafe { qp.add(i).read() };
        assert_eq!(got, pattern(seed, i), "realloc {qp:p}: byte {i} not kept");
    }
    fill(q, new_size, KIND_PLAIN, seed, kept);
    check(q, 0);
    Blk(q)
}

struct Shared {
    tx: Sender<Blk>,
    rx: Receiver<Blk>,
    /// Blocks checked and freed by the workers (for the report).
    freed: AtomicU64,
    passed: AtomicU64,
}

fn worker(shared: &Shared, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut kept: Vec<Blk> = Vec::new();
    let send = |b: Blk, rng: &mut Rng| match shared.tx.try_send(b) {
        Ok(()) => {
            shared.passed.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
            check_and_free(b, rng);
            shared.freed.fetch_add(1, Ordering::Relaxed);
        }
    };
    for _ in 0..STEPS_PER_WORKER {
        match rng.below(20) {
            0..=6 => kept.push(alloc_plain(&mut rng)),
            7 => send(alloc_tree(&mut rng), &mut rng),
            8..=10 => {
                if !kept.is_empty() {
                    let b = kept.swap_remove(rng.below(kept.len()));
                    send(b, &mut rng);
                }
            }
            11..=15 => {
                if let Ok(b) = shared.rx.try_recv() {
                    match rng.below(4) {
                        0 => kept.push(realloc_plain(b, &mut rng)),
                        1 => {
                            check(b.0, 0);
                            send(b, &mut rng);
                        }
                        _ => {
                            check_and_free(b, &mut rng);
                            shared.freed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            _ => {
                if !kept.is_empty() {
                    let b = kept.swap_remove(rng.below(kept.len()));
                    check_and_free(b, &mut rng);
                    shared.freed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while kept.len() > RETAIN_MAX {
            let b = kept.swap_remove(rng.below(kept.len()));
            check_and_free(b, &mut rng);
            shared.freed.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Exit with blocks still alive: hand what is kept to the others (or free it if they are busy).
    for b in kept {
        send(b, &mut rng);
    }
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn threads_pass_blocks_to_each_other_and_exit_while_their_blocks_live() {
    let secs = env_num("NAPALLOC_STRESS_SECS").unwrap_or(if cfg!(miri) { 0 } else { 2 });
    let threads = env_num("NAPALLOC_STRESS_THREADS").unwrap_or(4).max(2) as usize;
    let seed = env_num("NAPALLOC_STRESS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("stress: {threads} threads, {secs} s, NAPALLOC_STRESS_SEED={seed}");

    let before = heap::stats();
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAP);
    let shared = Arc::new(Shared { tx, rx, freed: AtomicU64::new(0), passed: AtomicU64::new(0) });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seeds = Rng(seed | 1);
    let spawn = |s: u64| {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || worker(&shared, s))
    };
    // Each slot runs generation after generation: a new thread starts as soon as its predecessor
    // exits, while the predecessor's blocks are still in the channel or in other threads' hands.
    let mut slots: Vec<_> = (0..threads).map(|_| Some(spawn(seeds.next()))).collect();
    let mut spawned = threads;
    loop {
        let more = spawned < threads * MIN_GENERATIONS || Instant::now() < deadline;
        let mut running = 0;
        for slot in slots.iter_mut() {
            match slot.take() {
                Some(h) if h.is_finished() => {
                    h.join().expect("worker panicked");
                    if more {
                        *slot = Some(spawn(seeds.next()));
                        spawned += 1;
                        running += 1;
                    }
                }
                Some(h) => {
                    *slot = Some(h);
                    running += 1;
                }
                None => {}
            }
        }
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    // Every worker is gone; free what is left in the channel on this thread.
    let mut rng = Rng(seed ^ 0x5EED);
    let mut drained = 0u64;
    while let Ok(b) = shared.rx.try_recv() {
        check_and_free(b, &mut rng);
        drained += 1;
    }
    let after = heap::stats();
    eprintln!(
        "stress: {spawned} workers, {} blocks passed between threads, {} freed by workers, {drained} drained at the end; {after:?}",
        shared.passed.load(Ordering::Relaxed),
        shared.freed.load(Ordering::Relaxed)
    );
    assert!(shared.passed.load(Ordering::Relaxed) > 0, "no block was passed between threads");
    assert_eq!(after.live_blocks, before.live_blocks, "blocks lost or freed twice");
    assert_eq!(after.live_bytes, before.live_bytes, "live bytes do not balance");
    assert_eq!(after.bad_pointers, before.bad_pointers, "the heap refused a pointer it handed out");
    assert_eq!(after.failed_allocations, before.failed_allocations, "an allocation failed");
}
