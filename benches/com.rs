//! The canonical request of WORKLOAD.md, the COM way (every block allocated and freed on its own:
//! blocks, then the array, then the header), in nanoseconds: napalloc's task heap
//! (`heap::alloc`/`heap::free`, and the `CoTaskMemAlloc`/`CoTaskMemFree` exports), Rust's System
//! allocator (glibc malloc/free on Linux) and the no-allocation floor, measured in the same run.
//! One iteration is one request. Instructions per request: `examples/com_way.rs` under callgrind.
//!
//! `cargo bench --bench com` measures; `cargo bench --bench com -- --test` runs each once.
//!
//! `cargo bench --bench com -- paired` prints the paired reports, the figures to compare with
//! the bars (about 40 s): each ratio is taken between measurements made milliseconds apart, in
//! rounds that interleave the variants, and the median over the rounds is reported with its
//! p10–p90 spread and the machine's load average:
//! * `paired/com_way`: ns per request, one thread, floor / glibc / `heap::alloc` / the C exports
//!   / mimalloc, and each ÷ glibc (bar: exports ≤ 0.70×);
//! * `paired/threads`: requests/s with two threads ÷ with one, one- and two-thread phases
//!   alternating in the same pair of threads, and that scaling ÷ the no-allocation floor's
//!   scaling of the same round (what the machine gives two threads at that moment; bar ≥ 1.8×);
//! * `paired/cross_thread`: the producer/consumer pair ÷ the same requests on one thread (bar
//!   ≥ 0.5×), for the batched hand-off and the per-request ring, with the floor's pair as the
//!   harness's own cost.
//!
//! The same reports without criterion: `target/release/examples/com_way paired-com-way N
//! [ROUNDS]` (and `paired-threads`, `paired-cross-thread`); for C callers of `libnapalloc.so`,
//! `benches/c/com_way.c` (`paired N [ROUNDS]`).
//!
//! Instructions per request (deterministic): `benches/com_way_instructions.sh`, which runs
//! `examples/com_way.rs` and the C harness `benches/c/com_way.c` (through `libnapalloc.so`)
//! under callgrind. The README has the figures and the loads they were taken under.

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
    use std::sync::Mutex;
    use std::time::Duration;

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

    /// Requests per second of every sample criterion took, by benchmark name (for the ratios).
    static RATES: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

    /// Time `n` requests with `f` and keep the sample's rate under `name`.
    fn sample(name: &'static str, n: u64, f: impl FnOnce(u64) -> Duration) -> Duration {
        let t = f(n);
        RATES.lock().unwrap().push((name, n as f64 / t.as_secs_f64().max(1e-9)));
        t
    }

    /// The median of the sample rates kept under `name`; `None` for fewer than 10 samples (a
    /// `--test` run times one request per benchmark, thread start included: no figure).
    fn median(name: &str) -> Option<f64> {
        let mut v: Vec<f64> = RATES.lock().unwrap().iter().filter(|(n, _)| *n == name).map(|&(_, r)| r).collect();
        v.sort_by(f64::total_cmp);
        (v.len() >= 10).then(|| v[v.len() / 2])
    }

    /// SPEC bar of the COM task allocator: a producer/consumer pair, every block freed by the
    /// other thread, against the same requests allocated and freed on one thread. Throughput is
    /// requests per second; the bar is pair ≥ 0.5 × same-thread.
    ///
    /// `pair` hands the requests over [`HANDOFF`] at a time (`pair_batched`): servers hand a
    /// worker whole requests or batches of them, and a ring slot per request measures the ring's
    /// cache-line ping-pong rather than the allocator (with no allocation at all, that shape
    /// reaches only about half of the one-thread rate). `pair-each` is that per-request shape
    /// (`pair_each`), kept for comparison. Every block is allocated by one thread and freed, on
    /// its own, by the other in both. After the group, the medians of criterion's samples and
    /// the ratios pair / same-thread are printed, all from this run.
    fn cross_thread(c: &mut Criterion) {
        RATES.lock().unwrap().clear();
        let mut g = c.benchmark_group("cross_thread");
        g.throughput(Throughput::Elements(1));
        let floor = || Floor(Box::new([0; 4096]));
        g.bench_function("floor/same-thread", |b| {
            b.iter_custom(|n| sample("floor/same-thread", n, |n| same_thread(floor(), n)))
        });
        g.bench_function("floor/pair", |b| {
            b.iter_custom(|n| sample("floor/pair", n, |n| pair_batched(floor(), n, HANDOFF)))
        });
        g.bench_function("floor/pair-each", |b| {
            b.iter_custom(|n| sample("floor/pair-each", n, |n| pair_each(floor(), n)))
        });
        g.bench_function("heap/same-thread", |b| {
            b.iter_custom(|n| sample("heap/same-thread", n, |n| same_thread(TaskHeap, n)))
        });
        g.bench_function("heap/pair", |b| {
            b.iter_custom(|n| sample("heap/pair", n, |n| pair_batched(TaskHeap, n, HANDOFF)))
        });
        g.bench_function("heap/pair-each", |b| {
            b.iter_custom(|n| sample("heap/pair-each", n, |n| pair_each(TaskHeap, n)))
        });
        let system = || Global(std::alloc::System);
        g.bench_function("system/same-thread", |b| {
            b.iter_custom(|n| sample("system/same-thread", n, |n| same_thread(system(), n)))
        });
        g.bench_function("system/pair", |b| {
            b.iter_custom(|n| sample("system/pair", n, |n| pair_batched(system(), n, HANDOFF)))
        });
        g.bench_function("system/pair-each", |b| {
            b.iter_custom(|n| sample("system/pair-each", n, |n| pair_each(system(), n)))
        });
        g.finish();
        for who in ["floor", "heap", "system"] {
            let Some(one) = median(&format!("{who}/same-thread")) else { continue };
            let mut line = format!("cross_thread/{who}: same-thread {:.0} K/s", one / 1e3);
            for shape in ["pair", "pair-each"] {
                if let Some(r) = median(&format!("{who}/{shape}")) {
                    line += &format!(", {shape} {:.0} K/s ({:.2}x)", r / 1e3, r / one);
                }
            }
            println!("{line}");
        }
    }

    /// The positional filter criterion was given (`cargo bench --bench com -- FILTER`), if any.
    fn filter() -> Option<String> {
        std::env::args().skip(1).find(|a| !a.starts_with('-'))
    }

    /// The paired reports (`com_way/mod.rs`): ratios taken within interleaved rounds, so that a
    /// change of the machine's speed cannot fake them (see there). Selected like a benchmark, by
    /// a filter that is a substring of `paired/com_way`, `paired/threads`,
    /// `paired/cross_thread` (so `-- paired` runs all three); a `--test` run does each once
    /// with a handful of requests and prints nothing.
    fn paired(_: &mut Criterion) {
        let test = std::env::args().any(|a| a == "--test");
        let f = filter();
        let want = |name: &str| f.as_deref().is_none_or(|f| name.contains(f));
        type Report = fn(usize, u64) -> String;
        let reports: [(&str, Report, usize, u64); 3] = [
            ("paired/com_way", report_com_way, 100, 20_000),
            ("paired/threads", report_threads, 30, 100_000),
            ("paired/cross_thread", report_cross_thread, 30, 40_000),
        ];
        for (name, report, rounds, n) in reports {
            if !want(name) {
                continue;
            }
            if test {
                let _ = report(2, 10);
                println!("Testing {name}\nSuccess");
            } else {
                println!("{}", report(rounds, n));
            }
        }
    }

    criterion_group! {
        name = benches;
        config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        targets = com_way, cross_thread, paired
    }

    pub fn main() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
