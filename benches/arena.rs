//! PageArena against bumpalo, measured in the same run.
//!
//! * `alloc_layout/*`: one bump allocation. Each iteration allocates a batch of 1000 layouts of
//!   16..=256 bytes (the block sizes of the canonical request, same xorshift64 sequence), then
//!   resets the arena; the throughput is per allocation, so criterion reports ns per allocation.
//! * `reset/*`: the cost of `reset` with 1 and with 1,000,000 live allocations. `reset` only
//!   moves the bump offset back, so both must cost the same. This part is timed by hand, one
//!   reset per round: criterion sizes its loops by the timed part alone, and refilling an arena
//!   with a million allocations for each of millions of timed resets would never finish.
//!
//! `cargo bench --bench arena` measures; `cargo bench --bench arena -- --test` runs every
//! benchmark once, as a check that it still works.

#[cfg(unix)]
fn main() {
    bench::main();
}

// criterion is a Unix-only dev-dependency; elsewhere the bench is an empty program.
#[cfg(not(unix))]
fn main() {}

#[cfg(unix)]
mod bench {
    use bumpalo::Bump;
    use core::alloc::Layout;
    use criterion::{black_box, Criterion, Throughput};
    use napalloc::PageArena;
    use std::time::{Duration, Instant};

    const BATCH: usize = 1000;

    /// The canonical request's generator (xorshift64, shifts 13, 7, 17).
    struct XorShift(u64);

    impl XorShift {
        fn new() -> Self {
            XorShift(0x243F_6A88_85A3_08D3)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// `n` layouts of 16 + ((r >> 32) * 241 >> 32) bytes (16..=256) with alignment `align`.
    fn layouts(n: usize, align: usize) -> Vec<Layout> {
        let mut rng = XorShift::new();
        (0..n)
            .map(|_| {
                let size = 16 + (((rng.next() >> 32) * 241) >> 32) as usize;
                Layout::from_size_align(size, align).unwrap()
            })
            .collect()
    }

    fn alloc_layout(c: &mut Criterion) {
        for align in [8, 16] {
            let layouts = layouts(BATCH, align);
            let mut group = c.benchmark_group(format!("alloc_layout/align{align}"));
            group.throughput(Throughput::Elements(BATCH as u64));

            let mut arena = PageArena::new().unwrap();
            group.bench_function("PageArena", |b| {
                b.iter(|| {
                    for &l in &layouts {
                        black_box(arena.alloc_layout(black_box(l)).unwrap());
                    }
                    arena.reset();
                })
            });

            let mut bump = Bump::new();
            group.bench_function("bumpalo", |b| {
                b.iter(|| {
                    for &l in &layouts {
                        black_box(bump.alloc_layout(black_box(l)));
                    }
                    bump.reset();
                })
            });
            group.finish();
        }
    }

    /// Fill with `live` allocations (untimed), then time one `reset`; `rounds` times. Returns the
    /// sorted per-round times.
    fn time_resets<A>(
        arena: &mut A,
        live: usize,
        rounds: usize,
        mut alloc: impl FnMut(&A, Layout),
        mut reset: impl FnMut(&mut A),
    ) -> Vec<Duration> {
        let layouts = layouts(1024, 8);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            for i in 0..live {
                alloc(arena, layouts[i % layouts.len()]);
            }
            let start = Instant::now();
            reset(black_box(&mut *arena));
            times.push(start.elapsed());
        }
        times.sort();
        times
    }

    /// The cost of reading the clock twice, to subtract from the reset times.
    fn clock_overhead(rounds: usize) -> Vec<Duration> {
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let start = Instant::now();
                black_box(());
                start.elapsed()
            })
            .collect();
        times.sort();
        times
    }

    fn report(name: &str, times: &[Duration]) {
        let ns = |d: Duration| d.as_secs_f64() * 1e9;
        println!(
            "{name:<28} median {:>10.1} ns   min {:>10.1} ns   max {:>10.1} ns   ({} rounds)",
            ns(times[times.len() / 2]),
            ns(times[0]),
            ns(times[times.len() - 1]),
            times.len()
        );
    }

    fn reset(quick: bool, filter: &[String]) {
        let selected = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
        let rounds = if quick { 1 } else { 201 };
        let alloc_arena = |a: &PageArena, l: Layout| {
            black_box(a.alloc_layout(l).unwrap());
        };
        let alloc_bump = |a: &Bump, l: Layout| {
            black_box(a.alloc_layout(l));
        };
        if selected("reset/clock") {
            report("reset/clock (no reset)", &clock_overhead(rounds));
        }
        for live in [1, 1_000_000] {
            let name = format!("reset/PageArena/{live}");
            if selected(&name) {
                let mut arena = PageArena::new().unwrap();
                report(&name, &time_resets(&mut arena, live, rounds, alloc_arena, PageArena::reset));
            }
            let name = format!("reset/bumpalo/{live}");
            if selected(&name) {
                let mut bump = Bump::new();
                report(&name, &time_resets(&mut bump, live, rounds, alloc_bump, Bump::reset));
            }
        }
    }

    pub(super) fn main() {
        // criterion takes its options from the command line; the hand-timed part honours
        // `--test` (run once) and the name filters.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--test");
        let listing = args.iter().any(|a| a == "--list");
        let filter: Vec<String> = args.iter().filter(|a| !a.starts_with('-')).cloned().collect();

        let mut c = Criterion::default().configure_from_args();
        alloc_layout(&mut c);
        c.final_summary();
        if listing {
            println!("reset/clock: benchmark");
            for live in [1, 1_000_000] {
                println!("reset/PageArena/{live}: benchmark");
                println!("reset/bumpalo/{live}: benchmark");
            }
        } else {
            reset(quick, &filter);
        }
    }
}
