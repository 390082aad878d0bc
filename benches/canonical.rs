//! The canonical request (WORKLOAD.md) in every napalloc mode and for the baselines, one thread
//! and two threads (each its own request loop). One iteration is one request, so criterion's
//! time per iteration is ns/request.
//!
//! ```text
//! cargo bench --bench canonical                 # about 4 minutes (26 benchmarks, 7.5 s each)
//! cargo bench --bench canonical -- --test       # every benchmark once (CI)
//! python3 benches/plot.py                       # benches/results/ns_per_request.svg
//! ```
#[cfg(unix)]
mod common;

#[cfg(unix)]
mod imp {
    use super::common::*;
    use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    fn region() -> napalloc::Region {
        napalloc::Region::new().expect("a region")
    }

    /// A fresh state of every mode (each thread makes its own).
    #[derive(Clone, Copy, Debug)]
    pub enum Which {
        Floor,
        HandBump,
        Bumpalo,
        System,
        Mimalloc,
        Untracked,
        Cursor,
        TrackedFree,
        TrackedReset,
        TrackedCursor,
        Com,
        ComScope,
    }

    pub const ALL: &[(Which, &str)] = &[
        (Which::Floor, "floor"),
        (Which::HandBump, "hand-bump"),
        (Which::Bumpalo, "bumpalo"),
        (Which::System, "system"),
        (Which::Mimalloc, "mimalloc"),
        (Which::Untracked, "napalloc-untracked"),
        (Which::Cursor, "napalloc-cursor"),
        (Which::TrackedFree, "napalloc-tracked-free"),
        (Which::TrackedReset, "napalloc-tracked-reset"),
        (Which::TrackedCursor, "napalloc-tracked-cursor"),
        (Which::Com, "napalloc-com"),
        (Which::ComScope, "napalloc-com-scope"),
    ];

    /// Run `n` requests of mode `w` with the generator of thread `t`, after a warm-up; returns the
    /// time of the `n` requests alone. `start` lines the threads up after their warm-up.
    fn timed(w: Which, t: u64, n: u64, start: &Barrier) -> Duration {
        fn go<M: Mode>(mut m: M, t: u64, n: u64, start: &Barrier) -> Duration {
            let mut rng = Rng::for_thread(t);
            run(&mut m, &mut rng, 64);
            start.wait();
            let t0 = Instant::now();
            run(&mut m, &mut rng, n);
            t0.elapsed()
        }
        match w {
            Which::Floor => go(Floor::new(), t, n, start),
            Which::HandBump => go(HandBump::new(), t, n, start),
            Which::Bumpalo => go(Bumpalo(bumpalo::Bump::with_capacity(1 << 16)), t, n, start),
            Which::System => go(Global(std::alloc::System), t, n, start),
            Which::Mimalloc => go(Global(mimalloc::MiMalloc), t, n, start),
            Which::Untracked => go(Untracked(region()), t, n, start),
            Which::Cursor => {
                let mut a = ArenaCursor(napalloc::PageArena::new().expect("an arena"));
                let mut rng = Rng::for_thread(t);
                run_cursor(&mut a, &mut rng, 64);
                start.wait();
                let t0 = Instant::now();
                run_cursor(&mut a, &mut rng, n);
                t0.elapsed()
            }
            Which::TrackedFree => go(TrackedFree(region()), t, n, start),
            Which::TrackedReset => go(TrackedReset(region()), t, n, start),
            Which::TrackedCursor => {
                let mut m = TrackedCursor(region());
                let mut rng = Rng::for_thread(t);
                run_child_cursor(&mut m, &mut rng, 64);
                start.wait();
                let t0 = Instant::now();
                run_child_cursor(&mut m, &mut rng, n);
                t0.elapsed()
            }
            Which::Com => go(Com, t, n, start),
            Which::ComScope => go(ComScope(None), t, n, start),
        }
    }

    /// One thread: ns per request.
    fn single(c: &mut Criterion) {
        let mut g = c.benchmark_group("canonical");
        g.throughput(Throughput::Elements(1));
        for &(w, name) in ALL {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| timed(w, 0, iters, &Barrier::new(1)));
            });
        }
        g.finish();
    }

    /// `threads` threads, each its own loop of `iters` requests; the time of the slowest. With
    /// `Throughput::Elements(threads)`, criterion reports requests per second of all threads.
    fn threads(c: &mut Criterion) {
        let mut g = c.benchmark_group("threads");
        for &(w, name) in ALL {
            if matches!(w, Which::HandBump | Which::Cursor) {
                continue;
            }
            for threads in [1u64, 2] {
                g.throughput(Throughput::Elements(threads));
                g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                    b.iter_custom(|iters| {
                        let start = Barrier::new(threads as usize);
                        std::thread::scope(|s| {
                            let hs: Vec<_> = (0..threads)
                                .map(|t| {
                                    s.spawn({
                                        let start = &start;
                                        move || timed(w, t, iters, start)
                                    })
                                })
                                .collect();
                            hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
                        })
                    });
                });
            }
        }
        g.finish();
    }

    fn config() -> Criterion {
        Criterion::default()
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(5))
            .sample_size(60)
    }

    criterion_group! {
        name = benches;
        config = config();
        targets = single, threads
    }
}

#[cfg(unix)]
criterion::criterion_main!(imp::benches);

#[cfg(not(unix))]
fn main() {}
