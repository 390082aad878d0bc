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
