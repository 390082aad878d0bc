#![allow(clippy::needless_range_loop)]
use napalloc::heap;
use std::hint::black_box;
fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let mut x: u64 = 0x243F6A8885A308D3;
    let mut blocks = [core::ptr::null_mut::<u8>(); 16];
    if mode == "floor" {
        let mut buf = vec![0u8; 8192];
        let bp = buf.as_mut_ptr();
        for _ in 0..n {
            let h = black_box(bp);
            let arr = black_box(unsafe { bp.add(16) });
            for i in 0..16 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let sz = 16 + (((x >> 32) * 241) >> 32) as usize;
                let b = black_box(unsafe { bp.add(128 + sz * 16) });
                unsafe {
                    b.write(1);
                    (arr as *mut *mut u8).add(i & 7).write(b);
                }
                blocks[i] = b;
            }
            for b in blocks {
                black_box(b);
            }
            black_box(arr);
            black_box(h);
        }
        return;
    }
    if mode == "sys" {
        use std::alloc::{alloc, dealloc, Layout};
        for _ in 0..n {
            let h = unsafe { alloc(Layout::from_size_align(16, 16).unwrap()) };
            let arr = unsafe { alloc(Layout::from_size_align(64, 16).unwrap()) };
            let mut sizes = [0usize; 16];
            for i in 0..16 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let sz = 16 + (((x >> 32) * 241) >> 32) as usize;
                let b = unsafe { alloc(Layout::from_size_align(sz, 16).unwrap()) };
                unsafe {
                    b.write(1);
                    (arr as *mut *mut u8).add(i & 7).write(b);
                }
                blocks[i] = b;
                sizes[i] = sz;
            }
            for i in 0..16 {
                unsafe { dealloc(blocks[i], Layout::from_size_align(sizes[i], 16).unwrap()) }
            }
            unsafe {
                dealloc(arr, Layout::from_size_align(64, 16).unwrap());
                dealloc(h, Layout::from_size_align(16, 16).unwrap());
            }
        }
        return;
    }
    for _ in 0..n {
        let h = heap::alloc(16).unwrap().as_ptr();
        let arr = heap::alloc(64).unwrap().as_ptr();
        for i in 0..16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let sz = 16 + (((x >> 32) * 241) >> 32) as usize;
            let b = heap::alloc(sz).unwrap().as_ptr();
            unsafe {
                b.write(1);
                (arr as *mut *mut u8).add(i & 7).write(b);
            }
            blocks[i] = b;
        }
        for b in blocks {
            unsafe {
                black_box(heap::free(b));
            }
        }
        unsafe {
            heap::free(arr);
            heap::free(h);
        }
    }
    println!("{:?}", heap::thread_stats().live_blocks);
}
