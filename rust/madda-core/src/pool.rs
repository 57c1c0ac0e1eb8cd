//! A rayon pool that survives `fork()`.
//!
//! rayon's global pool keeps its worker threads in the parent; a forked child (PyTorch DataLoader
//! workers, multiprocessing) inherits a pool whose threads do not exist and deadlocks on first
//! use. We key the pool by process id and build a fresh one when the id changes.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// Environment variable giving the default thread count (else the number of CPUs).
pub const THREADS_ENV: &str = "MADDA_NUM_THREADS";

struct Cached {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
}

static POOL: Mutex<Option<Cached>> = Mutex::new(None);

/// The thread count used when the caller passes none: `MADDA_NUM_THREADS`, else all CPUs.
pub fn default_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A pool with `threads` workers (None: [`default_threads`]) that belongs to this process.
pub fn get(threads: Option<usize>) -> Arc<ThreadPool> {
    let threads = threads.unwrap_or_else(default_threads).max(1);
    let pid = std::process::id();
    // A poisoned lock only means another thread panicked while swapping pools; the slot is still usable.
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match slot.as_ref() {
        Some(c) if c.pid == pid && c.threads == threads => Arc::clone(&c.pool),
        _ => {
            let pool = Arc::new(build(threads));
            // After a fork the old pool's threads are gone; dropping it would wait on them forever.
            if let Some(old) = slot.take() {
                if old.pid != pid {
                    std::mem::forget(old.pool);
                }
            }
            *slot = Some(Cached { pid, threads, pool: Arc::clone(&pool) });
            pool
        }
    }
}

fn build(threads: usize) -> ThreadPool {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("madda-{i}"))
        .build()
        // Building only fails when the OS refuses threads; a one-thread pool still does the work.
        .unwrap_or_else(|_| ThreadPoolBuilder::new().num_threads(1).build().expect("one-thread pool"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_request_reuses_the_pool() {
        let a = get(Some(2));
        let b = get(Some(2));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 2);
        assert_eq!(get(Some(1)).current_num_threads(), 1);
    }
}
