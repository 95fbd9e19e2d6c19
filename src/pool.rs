//! rtml's own rayon thread pool: sized by an environment variable, and rebuilt in a forked
//! child.
//!
//! rayon's global pool does not survive `fork()`: the child inherits the pool's bookkeeping but
//! none of its threads, so the first parallel call in the child waits forever for workers that
//! do not exist. That is what a service that imports rtml, warms up (a backfill, a
//! `Transforms.fit`) and then forks workers (gunicorn `--preload`, `multiprocessing` with the
//! `fork` start method, Celery prefork) would hit. So every parallel section of rtml runs on
//! this pool via [`install`], never on rayon's global pool, and the pool remembers the process
//! id that built it: a call from a different process (a forked child) builds a fresh pool,
//! with the same thread count, instead of using the dead one.
//!
//! The lookup is lock-free (an atomic pointer), so a fork at any moment, even while another
//! thread of the parent is inside a parallel section, cannot leave the child waiting on a lock
//! that a vanished thread held. The previous process's pool is leaked in the child, never
//! dropped: dropping it would signal threads that do not exist. One small allocation per fork
//! generation.
//!
//! Thread count: `RTML_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the number of CPUs this
//! process may run on (`std::thread::available_parallelism`, which honours CPU affinity and
//! cgroup quotas). Read when the pool is built: at the first parallel call of each process.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

struct Pool {
    pid: u32,
    pool: rayon::ThreadPool,
}

static POOL: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());
static WARNED: AtomicBool = AtomicBool::new(false);
#[cfg(unix)]
static AT_FORK: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" {
    fn pthread_atfork(
        prepare: Option<extern "C" fn()>,
        parent: Option<extern "C" fn()>,
        child: Option<extern "C" fn()>,
    ) -> std::ffi::c_int;
}

/// Runs in the child right after `fork()` (async-signal-safe: one atomic store). Forgets the
/// parent's pool so the next parallel call builds one. The pid check in [`current`] covers
/// forks that skip the handlers (a raw `clone` syscall); this covers the case a pid check
/// cannot: a descendant that is given the pid of an exited ancestor.
#[cfg(unix)]
extern "C" fn forget_pool_in_child() {
    POOL.store(std::ptr::null_mut(), Ordering::Release);
}

fn register_at_fork() {
    #[cfg(unix)]
    if !AT_FORK.swap(true, Ordering::AcqRel) {
        // SAFETY: registers a handler that only stores an atomic; failure (ENOMEM) leaves the
        // pid check as the only guard.
        unsafe {
            pthread_atfork(None, None, Some(forget_pool_in_child));
        }
    }
}

/// Upper bound on the configured thread count (a typo such as `RTML_NUM_THREADS=1000000`
/// would otherwise try to spawn a million threads).
pub const MAX_THREADS: usize = 1024;

/// Where the thread count came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    RtmlNumThreads,
    RayonNumThreads,
    Cpus,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::RtmlNumThreads => "RTML_NUM_THREADS",
            Source::RayonNumThreads => "RAYON_NUM_THREADS",
            Source::Cpus => "cpus",
        }
    }
}

/// Parse one variable's value: `Ok(None)` when unset, empty or `0` (meaning "default"),
/// `Err(message)` when it is not a number of threads.
fn parse(name: &str, value: Option<String>) -> Result<Option<usize>, String> {
    let Some(v) = value else {
        return Ok(None);
    };
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= MAX_THREADS => Ok(Some(n)),
        Ok(n) => Err(format!(
            "{name}={n} is more than {MAX_THREADS} threads; ignoring it"
        )),
        Err(_) => Err(format!(
            "{name}={v:?} is not a number of threads; ignoring it"
        )),
    }
}

/// The thread count the environment asks for, where it came from, and warnings about values
/// that were ignored. Pure function of the two variables' values (testable without touching
/// the process environment).
pub fn resolve(rtml: Option<String>, rayon: Option<String>) -> (usize, Source, Vec<String>) {
    let mut warnings = Vec::new();
    for (name, value, source) in [
        ("RTML_NUM_THREADS", rtml, Source::RtmlNumThreads),
        ("RAYON_NUM_THREADS", rayon, Source::RayonNumThreads),
    ] {
        match parse(name, value) {
            Ok(Some(n)) => return (n, source, warnings),
            Ok(None) => {}
            Err(w) => warnings.push(w),
        }
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (cpus, Source::Cpus, warnings)
}

/// The thread count a pool built now would get, and where it came from.
pub fn configured() -> (usize, Source) {
    let (n, source, _) = resolve(
        std::env::var("RTML_NUM_THREADS").ok(),
        std::env::var("RAYON_NUM_THREADS").ok(),
    );
    (n, source)
}

fn build(pid: u32) -> Option<Box<Pool>> {
    let (n, _, warnings) = resolve(
        std::env::var("RTML_NUM_THREADS").ok(),
        std::env::var("RAYON_NUM_THREADS").ok(),
    );
    if !warnings.is_empty() && !WARNED.swap(true, Ordering::Relaxed) {
        for w in &warnings {
            eprintln!("rtml: {w}");
        }
    }
    let builder = |n: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("rtml-{i}"))
            .build()
    };
    // If the threads cannot be spawned (resource limits), try one thread before giving up.
    let pool = builder(n).or_else(|_| builder(1)).ok()?;
    Some(Box::new(Pool { pid, pool }))
}

/// This process's pool, built on first use (and again after a fork).
fn current() -> Option<&'static rayon::ThreadPool> {
    register_at_fork();
    let pid = std::process::id();
    let p = POOL.load(Ordering::Acquire);
    // SAFETY: a non-null pointer in POOL came from `Box::into_raw` and is never freed.
    if let Some(existing) = unsafe { p.as_ref() } {
        if existing.pid == pid {
            return Some(&existing.pool);
        }
    }
    let fresh = Box::into_raw(build(pid)?);
    match POOL.compare_exchange(p, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // `p`, if any, belonged to the parent process: leaked on purpose (see the module docs).
        // SAFETY: `fresh` was just published and is never freed.
        Ok(_) => Some(unsafe { &(*fresh).pool }),
        Err(winner) => {
            // Another thread of this process published a pool first: use it, drop ours.
            // SAFETY: `fresh` was never published, so this thread owns it.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above, a published pointer is never freed.
            unsafe { winner.as_ref() }.map(|w| &w.pool)
        }
    }
}

/// Run `op` on rtml's pool: every rayon parallel iterator inside it uses this pool's threads.
/// Called from one of the pool's own threads, `op` simply runs there (no nested pool hop).
/// If no thread can be spawned at all, `op` runs on rayon's global pool.
pub fn install<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    match current() {
        Some(pool) => pool.install(op),
        None => op(),
    }
}

/// Number of threads in this process's pool (building it if needed).
pub fn num_threads() -> usize {
    current()
        .map(|p| p.current_num_threads())
        .unwrap_or_else(rayon::current_num_threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn resolution_order() {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        assert_eq!(resolve(s("3"), s("5")).0, 3);
        assert_eq!(resolve(s("3"), s("5")).1, Source::RtmlNumThreads);
        assert_eq!(resolve(None, s("5")), (5, Source::RayonNumThreads, vec![]));
        assert_eq!(resolve(s(""), s("5")).0, 5);
        assert_eq!(resolve(s("0"), s("5")).0, 5);
        assert_eq!(resolve(s(" 2 "), None).0, 2);
        assert_eq!(resolve(None, None), (cpus, Source::Cpus, vec![]));
        let (n, src, w) = resolve(s("four"), s("2"));
        assert_eq!((n, src), (2, Source::RayonNumThreads));
        assert!(
            w[0].contains("RTML_NUM_THREADS") && w[0].contains("four"),
            "{w:?}"
        );
        let (n, src, w) = resolve(s("-1"), s("99999"));
        assert_eq!((n, src, w.len()), (cpus, Source::Cpus, 2));
        assert_eq!(resolve(s("1024"), None).0, 1024);
    }

    #[test]
    fn install_runs_on_named_pool_threads() {
        use rayon::prelude::*;
        let names: Vec<String> = install(|| {
            (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().name().unwrap_or("").to_string())
                .collect()
        });
        assert!(names.iter().all(|n| n.starts_with("rtml-")), "{names:?}");
        assert!(num_threads() >= 1);
        // Nested install from a pool thread runs in place.
        let inner = install(|| install(|| std::thread::current().name().map(str::to_string)));
        assert!(inner.unwrap().starts_with("rtml-"));
    }
}
