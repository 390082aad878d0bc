//! The canonical request, the COM way (each block allocated and freed on its own), N times in one
//! mode: the harness for counting instructions per request with callgrind.
//!
//! ```text
//! cargo build --release --example com_way
//! valgrind --tool=callgrind target/release/examples/com_way MODE 0
//! valgrind --tool=callgrind target/release/examples/com_way MODE 10000
//! ```
//! Modes: `floor` (the loop without allocation), `system` (Rust's System allocator: glibc
//! malloc/free), `heap` (napalloc's `heap::alloc` / `heap::free`), `cotaskmem` (the C exports).
//! Each run first does 64 warm-up requests, so the N = 0 run has the same start-up and lazily
//! created state: `(Ir(N) - Ir(0)) / N` is the cost of one request.

#[path = "../benches/com_way/mod.rs"]
mod com_way;

use com_way::*;

fn go<A: Com>(mut a: A, n: u64) {
    let mut x = SEED;
    run(&mut a, &mut x, 64);
    run(&mut a, &mut x, n);
    std::hint::black_box(x);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("usage: com_way floor|system|heap|cotaskmem N");
        std::process::exit(2);
    };
    match mode.as_str() {
        "floor" => go(Floor(Box::new([0; 4096])), n),
        "system" => go(Global(std::alloc::System), n),
        "heap" => go(TaskHeap, n),
        "cotaskmem" => go(CoTaskMem, n),
        "region" => go(BareRegion(napalloc::Region::new().unwrap()), n),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}
