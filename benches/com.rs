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
