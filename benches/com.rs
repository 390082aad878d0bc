//! The canonical request of WORKLOAD.md, the COM way (every block allocated and freed on its own:
//! blocks, then the array, then the header), in nanoseconds: napalloc's task heap
//! (`heap::alloc`/`heap::free`, and the `CoTaskMemAlloc`/`CoTaskMemFree` exports), Rust's System
//! allocator (glibc malloc/free on Linux) and the no-allocation floor, measured in the same run.
//! One iteration is one request. Instructions per request: `examples/com_way.rs` under callgrind.
//!
//! `cargo bench --bench com` measures; `cargo bench --bench com -- --test` runs each once.
//!
//! Measured on the 2-core development VM (shared with other builds, so nanoseconds are noisy;
//! medians of 11 interleaved runs of 2 000 000 requests of `examples/com_way.rs`, and
//! instructions from callgrind as `(Ir(10000) - Ir(0)) / 10000`):
//!
//! | mode | instr/req | above floor | vs System | ns/req (min–max) | above floor | vs System |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | floor | 541 | 0 | | 46 (45–57) | 0 | |
//! | System (glibc) | 2926 | 2385 | 1 | 202 (195–366) | 156 | 1 |
//! | `heap::alloc`/`free` | 1725 | 1184 | 0.50 | 200 (196–309) | 154 | 0.99 |
//! | `CoTaskMemAlloc`/`Free` | 2102 | 1561 | 0.65 | 224 (220–339) | 178 | 1.14 |
//! | bare `Region` | 1525 | 984 | 0.41 | 167 (166–264) | 121 | 0.78 |

#[path = "com_way/mod.rs"]
mod com_way;

#[cfg(unix)]
fn main() {
    bench::main();
}

// criterion is a Unix-only dev-dependency; elsewhere the bench is an empty program.
#[cfg(not(unix))]
fn main() {
    let _ = com_way::SEED;
}

#[cfg(unix)]
mod bench {
    use super::com_way::*;
    use criterion::{criterion_group, Criterion, Throughput};
    use crossbeam_queue::ArrayQueue;
    use crossbeam_utils::Backoff;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    fn bench<A: Com>(c: &mut Criterion, name: &str, mut a: A) {
        let mut x = SEED;
        run(&mut a, &mut x, 64); // warm up: pages committed, free lists filled
        c.bench_function(name, |b| b.iter(|| request(&mut a, &mut x)));
    }

    fn com_way(c: &mut Criterion) {
        bench(c, "com_way/floor", Floor(Box::new([0; 4096])));
        bench(c, "com_way/system", Global(std::alloc::System));
        bench(c, "com_way/heap", TaskHeap);
        bench(c, "com_way/cotaskmem", CoTaskMem);
    }

    /// `iters` requests on one thread: allocate a request, free it (the same-thread baseline).
    fn same_thread<A: Com + Send>(a: A, iters: u64) -> Duration {
        std::thread::scope(|s| {
            s.spawn(move || {
                let (mut a, mut x) = (a, SEED);
                run(&mut a, &mut x, 64);
                let t = Instant::now();
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

    /// `iters` requests by a producer/consumer pair: one thread allocates every request and hands
    /// its blocks over through a bounded lock-free ring; the other frees every block (each free is
    /// remote: it goes back to the producer's heap through its remote-free queue). Both sides
    /// back off (spin, then yield) rather than sleep when the ring is full or empty, so the figure
    /// is the allocator's and not the cost of waking a thread. The time from the first allocation to the last free.
    fn pair<A: Com + Send + Clone>(a: A, iters: u64) -> Duration {
        let ring = ArrayQueue::<Batch>::new(256);
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
            let t = Instant::now();
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

    /// SPEC bar of the COM task allocator: a producer/consumer pair, every block freed by the
    /// other thread, against the same requests allocated and freed on one thread. Throughput is
    /// requests per second; the bar is pair ≥ 0.5 × same-thread.
    fn cross_thread(c: &mut Criterion) {
        let mut g = c.benchmark_group("cross_thread");
        g.throughput(Throughput::Elements(1));
        g.bench_function("floor/same-thread", |b| b.iter_custom(|n| same_thread(Floor(Box::new([0; 4096])), n)));
        g.bench_function("floor/pair", |b| b.iter_custom(|n| pair(Floor(Box::new([0; 4096])), n)));
        g.bench_function("heap/same-thread", |b| b.iter_custom(|n| same_thread(TaskHeap, n)));
        g.bench_function("heap/pair", |b| b.iter_custom(|n| pair(TaskHeap, n)));
        g.bench_function("system/same-thread", |b| b.iter_custom(|n| same_thread(Global(std::alloc::System), n)));
        g.bench_function("system/pair", |b| b.iter_custom(|n| pair(Global(std::alloc::System), n)));
        g.finish();
    }

    criterion_group! {
        name = benches;
        config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        targets = com_way, cross_thread
    }

    pub fn main() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
