//! The canonical request, the COM way (each block allocated and freed on its own), N times in one
//! mode: the harness for counting instructions per request with callgrind.
//!
//! ```text
//! cargo build --release --example com_way
//! valgrind --tool=callgrind target/release/examples/com_way MODE 0
//! valgrind --tool=callgrind target/release/examples/com_way MODE 10000
//! ```
//! Modes: `floor` (the loop without allocation), `system` (Rust's System allocator: glibc
//! malloc/free), `heap` (napalloc's `heap::alloc` / `heap::free`), `cotaskmem` (the C exports),
//! `region` (a bare `Region`: `try_alloc` / `free_one`, without the task heap around it), and
//! `heap-2t` / `system-2t` / `cotaskmem-2t` (two threads, N requests each, for timing the
//! scaling, or for `--separate-threads=yes`), and
//! `floor-pair` / `heap-pair` / `system-pair` / `cotaskmem-pair` (the producer/consumer pair of `benches/com.rs`:
//! one thread allocates N requests, the other frees every block; under callgrind use
//! `--separate-threads=yes` to see each side's instructions). A pair mode prints its requests
//! per second (an optional third argument sets its requests per hand-off, 32 by default),
//! and so do `floor-same` / `heap-same` / `system-same` / `cotaskmem-same` (the same requests on
//! one thread, the baseline of the pair). `paired-com-way`, `paired-threads` and
//! `paired-cross-thread` print the paired reports of `benches/com.rs` (`-- paired`, mimalloc
//! among the variants on Unix): N requests per measurement, an optional third argument for the
//! rounds (40).
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
        eprintln!(
            "usage: com_way floor|system|heap|cotaskmem|region|heap-2t|system-2t|cotaskmem-2t|floor-same|heap-same|system-same|cotaskmem-same|floor-pair|heap-pair|system-pair|cotaskmem-pair N [K]\n       com_way paired-com-way|paired-threads|paired-cross-thread N [ROUNDS]"
        );
        std::process::exit(2);
    };
    // Requests per hand-off of a pair mode: the third argument, else the bench's.
    let k = args.get(3).and_then(|k| k.parse::<usize>().ok()).unwrap_or(HANDOFF);
    match mode.as_str() {
        "floor" => go(Floor(Box::new([0; 4096])), n),
        "system" => go(Global(std::alloc::System), n),
        "heap" => go(TaskHeap, n),
        "cotaskmem" => go(CoTaskMem, n),
        "region" => go(BareRegion(napalloc::Region::new().unwrap()), n),
        // Two threads, each its own request loop of N requests (its own random sequence).
        "heap-2t" | "system-2t" | "cotaskmem-2t" => {
            let (system, exports) = (mode.starts_with("system"), mode.starts_with("cotaskmem"));
            let threads: Vec<_> = (0..2u64)
                .map(|t| {
                    std::thread::spawn(move || {
                        let mut x = SEED.wrapping_add(t.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        if system {
                            let mut a = Global(std::alloc::System);
                            run(&mut a, &mut x, 64 + n);
                        } else if exports {
                            run(&mut CoTaskMem, &mut x, 64 + n);
                        } else {
                            run(&mut TaskHeap, &mut x, 64 + n);
                        }
                        std::hint::black_box(x);
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        }
        "floor-same" => rate(n, same_thread(Floor(Box::new([0; 4096])), n)),
        "heap-same" => rate(n, same_thread(TaskHeap, n)),
        "system-same" => rate(n, same_thread(Global(std::alloc::System), n)),
        "floor-pair" => rate(n, pair_batched(Floor(Box::new([0; 4096])), n, k)),
        "heap-pair" => rate(n, pair_batched(TaskHeap, n, k)),
        "system-pair" => rate(n, pair_batched(Global(std::alloc::System), n, k)),
        "cotaskmem-same" => rate(n, same_thread(CoTaskMem, n)),
        "cotaskmem-pair" => rate(n, pair_batched(CoTaskMem, n, k)),
        // The paired reports of `benches/com.rs`: N requests per measurement, the third argument
        // the rounds (default 40).
        "paired-com-way" => print!("{}", report_com_way(args.get(3).and_then(|r| r.parse().ok()).unwrap_or(40), n)),
        "paired-threads" => print!("{}", report_threads(args.get(3).and_then(|r| r.parse().ok()).unwrap_or(40), n)),
        "paired-cross-thread" => {
            print!("{}", report_cross_thread(args.get(3).and_then(|r| r.parse().ok()).unwrap_or(40), n))
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn rate(n: u64, t: std::time::Duration) {
    println!("{:.0} requests/s", n as f64 / t.as_secs_f64());
}
