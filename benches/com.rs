//! The canonical request of WORKLOAD.md, the COM way (every block allocated and freed on its own:
//! blocks, then the array, then the header), in nanoseconds: napalloc's task heap
//! (`heap::alloc`/`heap::free`, and the `CoTaskMemAlloc`/`CoTaskMemFree` exports), Rust's System
//! allocator (glibc malloc/free on Linux) and the no-allocation floor, measured in the same run.
//! One iteration is one request. Instructions per request: `examples/com_way.rs` under callgrind.
//!
//! `cargo bench --bench com` measures; `cargo bench --bench com -- --test` runs each once.

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
    use criterion::{criterion_group, Criterion};
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

    criterion_group! {
        name = benches;
        config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        targets = com_way
    }

    pub fn main() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
