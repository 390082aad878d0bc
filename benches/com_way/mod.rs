//! The canonical request of WORKLOAD.md, "the COM way": every block allocated and freed on its
//! own (blocks, then the array, then the header), shared by `benches/com.rs` (nanoseconds) and
//! `examples/com_way.rs` (instructions, under callgrind).
//!
//! Per request: a 16-byte header, an array of 8 pointers (64 bytes), 16 blocks of
//! `16 + ((r >> 32) * 241 >> 32)` bytes (xorshift64 13/7/17, seed 0x243F6A8885A308D3), one byte
//! written into each and `array[i & 7] = block`; then every block is freed, then the array, then
//! the header. Pointers pass through `black_box` so that no allocation can be optimized away.
#![allow(dead_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::hint::black_box;
use core::ptr::null_mut;

pub const SEED: u64 = 0x243F_6A88_85A3_08D3;
const BLOCKS: usize = 16;

/// xorshift64 (13, 7, 17).
#[inline(always)]
pub fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// An allocator as the COM way uses it: allocate by size, free by pointer (the size is passed
/// too, for the allocators that need it).
pub trait Com {
    fn alloc(&mut self, size: usize) -> *mut u8;
    fn free(&mut self, p: *mut u8, size: usize);
}

/// One canonical request, the COM way.
#[inline(always)]
pub fn request<A: Com>(a: &mut A, x: &mut u64) {
    let h = black_box(a.alloc(16));
    let arr = black_box(a.alloc(64)).cast::<*mut u8>();
    let mut blocks = [(null_mut::<u8>(), 0usize); BLOCKS];
    for (i, slot) in blocks.iter_mut().enumerate() {
        let size = 16 + (((next(x) >> 32) * 241) >> 32) as usize;
        let b = black_box(a.alloc(size));
        // SAFETY: `b` has at least 16 bytes and `arr` 8 pointer slots, both fresh.
        unsafe {
            b.write(i as u8);
            arr.add(i & 7).write(b);
        }
        *slot = (b, size);
    }
    for &(b, size) in &blocks {
        a.free(b, size);
    }
    a.free(arr.cast(), 64);
    a.free(h, 16);
}

/// `n` requests.
#[inline(never)]
pub fn run<A: Com>(a: &mut A, x: &mut u64, n: u64) {
    for _ in 0..n {
        request(a, x);
    }
}

/// The same loop without an allocator: the no-allocation floor.
#[derive(Clone)]
pub struct Floor(pub Box<[u8; 4096]>);
impl Com for Floor {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        self.0.as_mut_ptr().wrapping_add(size & 0x7F0)
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        black_box(p);
    }
}

/// napalloc's task heap: `heap::alloc` / `heap::free` (what `CoTaskMemAlloc` / `CoTaskMemFree`
/// do, without the C call).
#[derive(Clone, Copy)]
pub struct TaskHeap;
impl Com for TaskHeap {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        match napalloc::heap::alloc(size) {
            Some(p) => p.as_ptr(),
            None => oom(),
        }
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `alloc` and is freed once.
        unsafe { napalloc::heap::free(p) };
    }
}

/// The C exports themselves (`CoTaskMemAlloc` / `CoTaskMemFree`), called from Rust.
#[derive(Clone, Copy)]
pub struct CoTaskMem;
impl Com for CoTaskMem {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        let p = napalloc::ffi::CoTaskMemAlloc(size).cast::<u8>();
        if p.is_null() {
            oom();
        }
        p
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `alloc` and is freed once.
        unsafe { napalloc::ffi::CoTaskMemFree(p.cast()) };
    }
}

/// Any `GlobalAlloc` (the system allocator: glibc malloc/free on Linux), 16-aligned blocks.
#[derive(Clone, Copy)]
pub struct Global<G: GlobalAlloc>(pub G);
impl<G: GlobalAlloc> Com for Global<G> {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        // SAFETY: a non-zero size, alignment 16: a valid layout.
        let p = unsafe { self.0.alloc(Layout::from_size_align_unchecked(size, 16)) };
        if p.is_null() {
            oom();
        }
        p
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, size: usize) {
        // SAFETY: `p` came from `alloc` with this layout and is freed once.
        unsafe { self.0.dealloc(p, Layout::from_size_align_unchecked(size, 16)) };
    }
}

/// mimalloc (the `mimalloc` crate's `MiMalloc`, 16-aligned blocks): the allocator the paired
/// reports compare with besides glibc, because its remote frees are the design napalloc's follow
/// (a free by another thread goes back to the owner's page list without a lock).
#[cfg(unix)]
#[derive(Clone, Copy)]
pub struct Mimalloc;
#[cfg(unix)]
impl Com for Mimalloc {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        Global(mimalloc::MiMalloc).alloc(size)
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, size: usize) {
        Global(mimalloc::MiMalloc).free(p, size)
    }
}

#[cold]
#[inline(never)]
fn oom() -> ! {
    panic!("allocation failed in the benchmark")
}

/// A bare `Region` (no task heap around it): `try_alloc` / `free_one`, for comparison.
pub struct BareRegion(pub napalloc::Region);
impl Com for BareRegion {
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> *mut u8 {
        match self.0.try_alloc(size) {
            Some(p) => p.as_ptr(),
            None => self.0.alloc(core::alloc::Layout::from_size_align(size, 16).unwrap()).unwrap().as_ptr(),
        }
    }
    #[inline(always)]
    fn free(&mut self, p: *mut u8, _size: usize) {
        // SAFETY: `p` came from `alloc` and is freed once.
        unsafe { self.0.free_one(core::ptr::NonNull::new_unchecked(p)).unwrap() };
    }
}

/// The pointers of one request (16 blocks, the array, the header), in the order the COM way frees
/// them, handed from the thread that allocated them to the thread that frees them.
pub struct Batch(pub [*mut u8; BLOCKS + 2]);
// SAFETY: the pointers are plain addresses of task-heap blocks that any thread may free; the
// batch is owned by one thread at a time (moved through a channel).
unsafe impl Send for Batch {}

/// The allocating half of a request: what [`request`] allocates and writes, returned as a batch.
#[inline(always)]
pub fn request_alloc<A: Com>(a: &mut A, x: &mut u64) -> Batch {
    let mut out = [null_mut::<u8>(); BLOCKS + 2];
    let h = black_box(a.alloc(16));
    let arr = black_box(a.alloc(64)).cast::<*mut u8>();
    for (i, slot) in out.iter_mut().take(BLOCKS).enumerate() {
        let size = 16 + (((next(x) >> 32) * 241) >> 32) as usize;
        let b = black_box(a.alloc(size));
        // SAFETY: `b` has at least 16 bytes and `arr` 8 pointer slots, both fresh.
        unsafe {
            b.write(i as u8);
            arr.add(i & 7).write(b);
        }
        *slot = b;
    }
    out[BLOCKS] = arr.cast();
    out[BLOCKS + 1] = h;
    Batch(out)
}

/// The freeing half: every block of `b`, then the array, then the header (sizes are not kept:
/// only for allocators that free by pointer alone).
#[inline(always)]
pub fn request_free<A: Com>(a: &mut A, b: Batch) {
    for p in b.0 {
        a.free(p, 0);
    }
}

/// Requests per hand-off of [`pair_batched`] in `benches/com.rs`: a server hands a worker whole
/// requests, or a batch of them, not one pointer at a time.
pub const HANDOFF: usize = 32;
/// Requests in flight at most in [`pair_batched`] and [`pair_each`] (as many as the per-request
/// ring of [`pair_each`] holds).
const IN_FLIGHT: usize = 256;

/// `iters` requests on one thread: allocate a request, free it (the same-thread baseline).
pub fn same_thread<A: Com + Send>(a: A, iters: u64) -> std::time::Duration {
    std::thread::scope(|s| {
        s.spawn(move || {
            let (mut a, mut x) = (a, SEED);
            run(&mut a, &mut x, 64);
            let t = std::time::Instant::now();
            for _ in 0..iters {
                let b = request_alloc(&mut a, &mut x);
                request_free(&mut a, b);
            }
            t.elapsed()
        })
        .join()
        .unwrap()
    })
}

/// `iters` requests by a producer/consumer pair, one request per slot of a bounded lock-free
/// ring: the producer allocates every request and pushes its 18 pointers, the consumer pops and
/// frees them (every free is remote). Each request costs the ring's own cache-line ping-pong
/// (the slot, its stamp, the head and tail indices move between the cores every time), which is
/// the harness's cost, not the allocator's: with no allocation at all ([`Floor`]) this shape
/// reaches only about half of the one-thread rate. Kept to compare with [`pair_batched`].
pub fn pair_each<A: Com + Send + Clone>(a: A, iters: u64) -> std::time::Duration {
    use crossbeam_queue::ArrayQueue;
    use crossbeam_utils::Backoff;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ring = ArrayQueue::<Batch>::new(IN_FLIGHT);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut consumer = a.clone();
        let (ring, done) = (&ring, &done);
        let c = s.spawn(move || {
            let backoff = Backoff::new();
            loop {
                match ring.pop() {
                    Some(b) => {
                        request_free(&mut consumer, b);
                        backoff.reset();
                    }
                    None if done.load(Ordering::Acquire) && ring.is_empty() => break,
                    None => backoff.snooze(),
                }
            }
        });
        let (mut producer, mut x) = (a, SEED);
        run(&mut producer, &mut x, 64);
        let t = std::time::Instant::now();
        for _ in 0..iters {
            let mut b = request_alloc(&mut producer, &mut x);
            let backoff = Backoff::new();
            while let Err(back) = ring.push(b) {
                b = back;
                backoff.snooze();
            }
        }
        done.store(true, Ordering::Release);
        c.join().unwrap();
        t.elapsed()
    })
}

/// `iters` requests by a producer/consumer pair, `handoff` requests per hand-off: the producer
/// allocates requests into a reusable `Vec` and passes it over a ring; the consumer frees every
/// block (each free is remote: it goes back to the producer's heap) and passes the emptied `Vec`
/// back on a second ring. Every block is still allocated by one thread and freed by the other,
/// each on its own; only the hand-off is amortized, as a server's is (it hands a worker a whole
/// request or a batch of them, and a per-request ring slot would charge the allocator for the
/// harness's cache-line ping-pong). The `Vec`s are allocated before timing and reused, so the
/// harness allocates nothing while it is timed. Both sides back off (spin, then yield) rather
/// than sleep when there is nothing to do, so the figure is not the cost of waking a thread.
/// The time from the first allocation to the last free.
/// At most [`IN_FLIGHT`] requests are in flight (rounded up to whole hand-offs, at least two).
pub fn pair_batched<A: Com + Send + Clone>(a: A, iters: u64, handoff: usize) -> std::time::Duration {
    use crossbeam_queue::ArrayQueue;
    use crossbeam_utils::Backoff;
    use std::sync::atomic::{AtomicBool, Ordering};
    let handoff = handoff.max(1);
    let slots = IN_FLIGHT.div_ceil(handoff).max(2);
    let (full, empty) = (ArrayQueue::<Vec<Batch>>::new(slots), ArrayQueue::<Vec<Batch>>::new(slots));
    for _ in 0..slots {
        let _ = empty.push(Vec::with_capacity(handoff));
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut consumer = a.clone();
        let (full, empty, done) = (&full, &empty, &done);
        let c = s.spawn(move || {
            let backoff = Backoff::new();
            loop {
                match full.pop() {
                    Some(mut v) => {
                        for b in v.drain(..) {
                            request_free(&mut consumer, b);
                        }
                        // Never full: there are `slots` vectors in all.
                        let _ = empty.push(v);
                        backoff.reset();
                    }
                    None if done.load(Ordering::Acquire) && full.is_empty() => break,
                    None => backoff.snooze(),
                }
            }
        });
        let (mut producer, mut x) = (a, SEED);
        run(&mut producer, &mut x, 64);
        let t = std::time::Instant::now();
        let mut left = iters;
        while left > 0 {
            let backoff = Backoff::new();
            let mut v = loop {
                match empty.pop() {
                    Some(v) => break v,
                    None => backoff.snooze(),
                }
            };
            let n = left.min(handoff as u64);
            for _ in 0..n {
                v.push(request_alloc(&mut producer, &mut x));
            }
            left -= n;
            // Never full: there are `slots` vectors in all.
            let _ = full.push(v);
        }
        done.store(true, Ordering::Release);
        c.join().unwrap();
        t.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------
// Paired measurements: ratios that a change of the machine's speed cannot fake
// ---------------------------------------------------------------------------------------------
//
// On a shared machine the speed of the CPU changes from second to second (another build, a
// frequency step), so two figures taken one after the other, seconds apart, compare the machine
// as much as the allocators. Here every ratio comes from measurements taken next to each other
// (milliseconds apart) in rounds: each round times every variant once, in an order that rotates
// from round to round, and the ratio is formed *within* the round. A slowdown that lasts longer
// than a round hits both sides of the ratio alike; one that hits a single measurement spoils one
// round, which the median of the rounds ignores. Each round does the canonical request exactly
// (`run`, `same_thread`, `pair_batched`).

use std::time::{Duration, Instant};

/// The machine's load averages (1, 5, 15 minutes) from `/proc/loadavg`, for the report.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The `q`-quantile (0..=1) of `v` (sorted here), nearest rank; NaN for an empty `v`.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `median (p10–p90)` of `v`, with `digits` decimals.
pub fn spread(v: &mut [f64], digits: usize) -> String {
    let (m, lo, hi) = (quantile(v, 0.5), quantile(v, 0.1), quantile(v, 0.9));
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

/// A variant of a paired measurement: a name and a function that times `n` requests.
pub type Timed<'a> = (&'static str, Box<dyn FnMut(u64) -> Duration + 'a>);

/// `rounds` rounds; each times every variant once, starting with variant `round % len` (so no
/// variant always runs first, right after another's frees or the previous round's end).
/// Returns the durations, `[variant][round]`.
pub fn rounds(variants: &mut [Timed<'_>], rounds: usize, n: u64) -> Vec<Vec<Duration>> {
    let k = variants.len();
    let mut out = vec![Vec::with_capacity(rounds); k];
    for r in 0..rounds {
        for j in 0..k {
            let i = (r + j) % k;
            out[i].push((variants[i].1)(n));
        }
    }
    out
}

/// `n` requests of `a` on the calling thread, timed (the caller warmed `a` up).
pub fn timed<A: Com>(a: &mut A, x: &mut u64, n: u64) -> Duration {
    let t = Instant::now();
    run(a, x, n);
    t.elapsed()
}

/// A barrier that spins (both threads are running when it opens, so the two-thread phase starts
/// on both within a few hundred nanoseconds, which a sleeping barrier's wake-up would not give).
pub struct Spin(std::sync::atomic::AtomicUsize);
impl Spin {
    pub const fn new() -> Spin {
        Spin(std::sync::atomic::AtomicUsize::new(0))
    }
    /// Wait until both threads have called `wait` for the `k`-th time (`k` from 1).
    pub fn wait(&self, k: usize) {
        use std::sync::atomic::Ordering;
        self.0.fetch_add(1, Ordering::AcqRel);
        while self.0.load(Ordering::Acquire) < 2 * k {
            std::hint::spin_loop();
        }
    }
}

/// One round of the two-thread scaling measurement, in one pair of threads: `n` requests on
/// thread 0 alone (thread 1 asleep on a barrier meanwhile) and `n` requests on each of the two
/// threads at once, in that order or (`pair_first`) the other. Each thread has its own allocator
/// state (`make`), its own random sequence (WORKLOAD.md: thread t adds t × 0x9E3779B97F4A7C15)
/// and its own warm-up. Returns (requests/s of one thread, requests/s of both; the pair's time
/// is the slower thread's).
pub fn scaling_round<A: Com, F: Fn() -> A + Sync>(make: &F, n: u64, pair_first: bool) -> (f64, f64) {
    use std::sync::Barrier;
    let sleep = Barrier::new(2);
    let spin = Spin::new();
    let (mut solo, mut pair) = (Duration::ZERO, [Duration::ZERO; 2]);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u64)
            .map(|t| {
                let (sleep, spin) = (&sleep, &spin);
                s.spawn(move || {
                    let mut a = make();
                    let mut x = SEED.wrapping_add(t.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    run(&mut a, &mut x, 64);
                    let (mut solo, mut pair, mut spins) = (Duration::ZERO, Duration::ZERO, 0);
                    for phase in [pair_first, !pair_first] {
                        if phase {
                            spins += 1;
                            spin.wait(spins);
                            pair = timed(&mut a, &mut x, n);
                        } else {
                            sleep.wait();
                            if t == 0 {
                                solo = timed(&mut a, &mut x, n);
                            }
                        }
                        sleep.wait();
                    }
                    std::hint::black_box(x);
                    (solo, pair)
                })
            })
            .collect();
        for (t, h) in hs.into_iter().enumerate() {
            let (s, p) = h.join().unwrap();
            if t == 0 {
                solo = s;
            }
            pair[t] = p;
        }
    });
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    (n as f64 / secs(solo), 2.0 * n as f64 / secs(pair[0].max(pair[1])))
}

/// The variants of the two-thread reports, in their index order (mimalloc only where the crate
/// builds: Unix).
#[cfg(unix)]
const NAMES: &[&str] = &["floor", "system (glibc)", "heap::alloc/free", "CoTaskMemAlloc/Free", "mimalloc"];
#[cfg(not(unix))]
const NAMES: &[&str] = &["floor", "system (glibc)", "heap::alloc/free", "CoTaskMemAlloc/Free"];

fn floor() -> Floor {
    Floor(Box::new([0; 4096]))
}

fn system() -> Global<std::alloc::System> {
    Global(std::alloc::System)
}

/// A variant timing `n` requests of its own allocator state on the calling thread (warmed up
/// once, when it is made).
fn one_thread<'a, A: Com + 'a>(name: &'static str, mut a: A) -> Timed<'a> {
    let mut x = SEED;
    run(&mut a, &mut x, 64);
    (name, Box::new(move |n| timed(&mut a, &mut x, n)))
}

/// The COM way on one thread, ns per request: floor, glibc (Rust's System allocator),
/// `heap::alloc`/`free`, the C exports and (on Unix) mimalloc, `rounds` rounds of `n` requests each (see
/// [`rounds`]). Prints, for each variant, the median ns per request over the rounds and the
/// median over the rounds of its ratio to glibc in the same round, total and above the floor.
pub fn report_com_way(rounds_: usize, n: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let load = load_average();
    let mut v: Vec<Timed<'_>> = vec![
        one_thread("floor", floor()),
        one_thread("system (glibc)", system()),
        one_thread("heap::alloc/free", TaskHeap),
        one_thread("CoTaskMemAlloc/Free", CoTaskMem),
        #[cfg(unix)]
        one_thread("mimalloc", Mimalloc),
    ];
    let t = rounds(&mut v, rounds_, n);
    let ns = |d: &Duration| d.as_secs_f64() * 1e9 / n as f64;
    writeln!(
        o,
        "paired/com_way: {rounds_} rounds of {n} requests per variant, variants interleaved in each round \
         (load average {load} before, {} after)",
        load_average()
    )
    .unwrap();
    writeln!(o, "  ratios are taken within each round (X ÷ glibc of the same round), then their median; bar: CoTaskMem ≤ 0.70× glibc").unwrap();
    writeln!(
        o,
        "  {:<22} {:>24} {:>26} {:>26}",
        "variant", "ns/req median (p10–p90)", "÷ glibc median (p10–p90)", "above floor ÷ glibc's"
    )
    .unwrap();
    for (i, (name, _)) in v.iter().enumerate() {
        let mut a: Vec<f64> = t[i].iter().map(ns).collect();
        let mut r: Vec<f64> = (0..rounds_).map(|k| ns(&t[i][k]) / ns(&t[1][k])).collect();
        let mut f: Vec<f64> =
            (0..rounds_).map(|k| (ns(&t[i][k]) - ns(&t[0][k])) / (ns(&t[1][k]) - ns(&t[0][k]))).collect();
        writeln!(o, "  {:<22} {:>24} {:>26} {:>26}", name, spread(&mut a, 1), spread(&mut r, 2), spread(&mut f, 2))
            .unwrap();
    }
    o
}

/// Two threads against one (each thread its own request loop and its own state): `rounds`
/// rounds; in each, every variant runs one [`scaling_round`] of `n` requests (the one-thread
/// and two-thread phases in alternating order from round to round). Prints the median scaling
/// (requests/s of two threads ÷ of one) and its median ratio to the no-allocation floor's
/// scaling of the same round: the floor measures what the machine gives two threads at that
/// moment (on a shared 2-core VM, often well under 2×).
pub fn report_threads(rounds_: usize, n: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let load = load_average();
    let names = NAMES;
    let mut s = vec![Vec::with_capacity(rounds_); names.len()];
    for r in 0..rounds_ {
        for j in 0..names.len() {
            let i = (r + j) % names.len();
            let pf = r % 2 == 1;
            let (one, two) = match i {
                0 => scaling_round(&floor, n, pf),
                1 => scaling_round(&system, n, pf),
                2 => scaling_round(&|| TaskHeap, n, pf),
                3 => scaling_round(&|| CoTaskMem, n, pf),
                #[cfg(unix)]
                4 => scaling_round(&|| Mimalloc, n, pf),
                _ => unreachable!(),
            };
            s[i].push((one, two));
        }
    }
    writeln!(
        o,
        "paired/threads: {rounds_} rounds of {n} requests per thread, variants interleaved, one- and two-thread \
         phases alternating (load average {load} before, {} after)",
        load_average()
    )
    .unwrap();
    writeln!(o, "  scaling = requests/s of 2 threads ÷ of 1 thread, per round; bar: ≥ 1.8×").unwrap();
    writeln!(
        o,
        "  {:<22} {:>24} {:>24} {:>28}",
        "variant", "1 thread K req/s", "scaling median (p10–p90)", "÷ floor's scaling (p10–p90)"
    )
    .unwrap();
    for (i, name) in names.iter().enumerate() {
        let mut one: Vec<f64> = s[i].iter().map(|&(o, _)| o / 1e3).collect();
        let mut sc: Vec<f64> = s[i].iter().map(|&(o, t)| t / o).collect();
        let mut rel: Vec<f64> = (0..rounds_).map(|k| (s[i][k].1 / s[i][k].0) / (s[0][k].1 / s[0][k].0)).collect();
        writeln!(
            o,
            "  {:<22} {:>24} {:>24} {:>28}",
            name,
            spread(&mut one, 0),
            spread(&mut sc, 2),
            spread(&mut rel, 2)
        )
        .unwrap();
    }
    o
}

/// The producer/consumer pair against the same requests on one thread: `rounds` rounds; in
/// each, every variant times `n` requests on one thread ([`same_thread`]), by the pair handing
/// over [`HANDOFF`] requests at a time ([`pair_batched`]) and one request per ring slot
/// ([`pair_each`]), in that order or the reverse (alternating). Prints the median rates and the
/// median of the per-round ratios pair ÷ same-thread.
pub fn report_cross_thread(rounds_: usize, n: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    fn three<A: Com + Send + Clone>(a: A, n: u64, rev: bool) -> [f64; 3] {
        let rate = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        if rev {
            let e = rate(pair_each(a.clone(), n));
            let p = rate(pair_batched(a.clone(), n, HANDOFF));
            [rate(same_thread(a, n)), p, e]
        } else {
            let o = rate(same_thread(a.clone(), n));
            let p = rate(pair_batched(a.clone(), n, HANDOFF));
            [o, p, rate(pair_each(a, n))]
        }
    }
    let load = load_average();
    let names = NAMES;
    let mut s = vec![Vec::with_capacity(rounds_); names.len()];
    for r in 0..rounds_ {
        for j in 0..names.len() {
            let i = (r + j) % names.len();
            let rev = r % 2 == 1;
            s[i].push(match i {
                0 => three(floor(), n, rev),
                1 => three(system(), n, rev),
                2 => three(TaskHeap, n, rev),
                3 => three(CoTaskMem, n, rev),
                #[cfg(unix)]
                4 => three(Mimalloc, n, rev),
                _ => unreachable!(),
            });
        }
    }
    writeln!(
        o,
        "paired/cross_thread: {rounds_} rounds of {n} requests per shape, variants interleaved \
         (load average {load} before, {} after)",
        load_average()
    )
    .unwrap();
    writeln!(
        o,
        "  pair: one thread allocates, the other frees every block, {HANDOFF} requests per hand-off; pair-each: one \
         request per ring slot; ratios pair ÷ same-thread per round; bar: pair ≥ 0.5×"
    )
    .unwrap();
    writeln!(
        o,
        "  {:<22} {:>22} {:>22} {:>20} {:>22} {:>24}",
        "variant",
        "same-thread K req/s",
        "pair K req/s",
        "pair ÷ same-thread",
        "pair-each ÷ same",
        "pair ÷ same, ÷ floor's"
    )
    .unwrap();
    for (i, name) in names.iter().enumerate() {
        let col = |j: usize| -> Vec<f64> { s[i].iter().map(|r| r[j] / 1e3).collect() };
        let ratio = |j: usize| -> Vec<f64> { s[i].iter().map(|r| r[j] / r[0]).collect() };
        let (mut a, mut b) = (col(0), col(1));
        let (mut p, mut e) = (ratio(1), ratio(2));
        // The pair ratio against the no-allocation harness's pair ratio of the same round: what
        // the machine lets two threads handing work to each other do at that moment.
        let mut rel: Vec<f64> = (0..rounds_).map(|k| (s[i][k][1] / s[i][k][0]) / (s[0][k][1] / s[0][k][0])).collect();
        writeln!(
            o,
            "  {:<22} {:>22} {:>22} {:>20} {:>22} {:>24}",
            name,
            spread(&mut a, 0),
            spread(&mut b, 0),
            spread(&mut p, 2),
            spread(&mut e, 2),
            spread(&mut rel, 2)
        )
        .unwrap();
    }
    o
}
