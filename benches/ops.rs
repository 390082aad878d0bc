//! Single operations: the cost of `reset` against the number of live blocks, and realloc growth.
//!
//! ```text
//! cargo bench --bench ops                       # about 1 minute
//! cargo bench --bench ops -- --test             # every benchmark once (CI)
//! ```
#[cfg(unix)]
mod imp {
    use core::alloc::{GlobalAlloc, Layout};
    use core::hint::black_box;
    use criterion::{criterion_group, BenchmarkId, Criterion};
    use std::time::{Duration, Instant};

    fn l(size: usize) -> Layout {
        Layout::from_size_align(size, 16).unwrap()
    }

    /// Criterion sizes `iters` by the time measured, which here excludes the allocations made
    /// before each reset; so at most `cap` resets are really run and their time is scaled up to
    /// `iters` (the mean time of one reset is what is estimated).
    fn scaled(iters: u64, cap: u64, mut one: impl FnMut() -> Duration) -> Duration {
        let real = iters.clamp(1, cap);
        let mut total = Duration::ZERO;
        for _ in 0..real {
            total += one();
        }
        total.mul_f64(iters as f64 / real as f64)
    }

    /// Time of `reset` alone, with `n` live blocks of 16..=256 bytes allocated before each one.
    fn reset(c: &mut Criterion) {
        let mut g = c.benchmark_group("reset");
        g.sampling_mode(criterion::SamplingMode::Flat);
        // at most about 200k allocations per sample
        let cap = |n: usize| (200_000 / (n as u64 + 1)).max(2);
        for n in [0usize, 18, 1_000, 100_000] {
            // tracked roots: after the first few, every block is recorded in the side table
            g.bench_with_input(BenchmarkId::new("napalloc-tracked", n), &n, |b, &n| {
                let mut r = napalloc::Region::new().unwrap();
                b.iter_custom(|iters| {
                    scaled(iters, cap(n), || {
                        for i in 0..n {
                            black_box(r.alloc(l(16 + (i * 15) % 241)).unwrap());
                        }
                        let t0 = Instant::now();
                        r.reset();
                        t0.elapsed()
                    })
                });
            });
            // tracked children of one header: the canonical request's shape, a pending tail
            // when it is short
            g.bench_with_input(BenchmarkId::new("napalloc-children", n), &n, |b, &n| {
                let mut r = napalloc::Region::new().unwrap();
                b.iter_custom(|iters| {
                    scaled(iters, cap(n), || {
                        let h = r.alloc(l(16)).unwrap();
                        for i in 0..n {
                            black_box(r.alloc_child(h, l(16 + (i * 15) % 241)).unwrap());
                        }
                        let t0 = Instant::now();
                        r.reset();
                        t0.elapsed()
                    })
                });
            });
            g.bench_with_input(BenchmarkId::new("bumpalo", n), &n, |b, &n| {
                let mut bump = bumpalo::Bump::new();
                b.iter_custom(|iters| {
                    scaled(iters, cap(n), || {
                        for i in 0..n {
                            black_box(bump.alloc_layout(l(16 + (i * 15) % 241)));
                        }
                        let t0 = Instant::now();
                        bump.reset();
                        t0.elapsed()
                    })
                });
            });
        }
        g.finish();
    }

    /// Grow one block from 16 bytes to 64 KiB by doubling (13 reallocs), then free it.
    fn realloc(c: &mut Criterion) {
        let mut g = c.benchmark_group("realloc-16B-to-64KiB");
        // the newest block grows in place at the top of the arena
        g.bench_function("napalloc-region-top", |b| {
            let r = napalloc::Region::new().unwrap();
            b.iter(|| {
                let mut p = r.alloc(l(16)).unwrap();
                let mut size = 16;
                while size < 65536 {
                    size *= 2;
                    // SAFETY: p is live; only the returned pointer is used.
                    p = unsafe { r.realloc(black_box(p), size).unwrap() };
                }
                // SAFETY: p is live.
                unsafe { r.free(p).unwrap() };
            });
        });
        // another block sits above it: every growth moves
        g.bench_function("napalloc-region-moving", |b| {
            let r = napalloc::Region::new().unwrap();
            b.iter(|| {
                let mut p = r.alloc(l(16)).unwrap();
                let mut size = 16;
                while size < 65536 {
                    let fence = r.alloc(l(16)).unwrap();
                    size *= 2;
                    // SAFETY: p is live; only the returned pointer is used.
                    p = unsafe { r.realloc(black_box(p), size).unwrap() };
                    // SAFETY: fence is live.
                    unsafe { r.free(fence).unwrap() };
                }
                // SAFETY: p is live.
                unsafe { r.free(p).unwrap() };
            });
        });
        g.bench_function("napalloc-com", |b| {
            b.iter(|| {
                let mut p = napalloc::heap::alloc(16).unwrap().as_ptr();
                let mut size = 16;
                while size < 65536 {
                    size *= 2;
                    // SAFETY: p is live; only the returned pointer is used.
                    p = unsafe { napalloc::heap::realloc(black_box(p), size) };
                }
                // SAFETY: p is live.
                unsafe { napalloc::heap::free(p) };
            });
        });
        fn global<A: GlobalAlloc>(a: &A) {
            // SAFETY: sizes are non-zero; each pointer is used with the layout it has.
            unsafe {
                let mut p = a.alloc(l(16));
                let mut size = 16;
                while size < 65536 {
                    p = a.realloc(black_box(p), l(size), size * 2);
                    size *= 2;
                }
                a.dealloc(p, l(size));
            }
        }
        g.bench_function("system", |b| b.iter(|| global(&std::alloc::System)));
        g.bench_function("mimalloc", |b| b.iter(|| global(&mimalloc::MiMalloc)));
        g.finish();
    }

    fn config() -> Criterion {
        Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(30)
    }

    criterion_group! {
        name = benches;
        config = config();
        targets = reset, realloc
    }
}

#[cfg(unix)]
criterion::criterion_main!(imp::benches);

#[cfg(not(unix))]
fn main() {}
