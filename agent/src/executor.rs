//! The threads tract's kernels run on. tract splits a convolution, a matrix
//! product or a large element-wise op over its default executor; without
//! one every request runs on one core, which is where most of a CNN's gap
//! to onnxruntime (which uses every core by default) came from. Small
//! products stay inline: tract only splits work above its own size
//! thresholds, so tabular models are unaffected.
//!
//! One process-wide pool: concurrent requests queue their chunks on it
//! rather than each bringing its own threads, so the agent never runs more
//! kernel threads than the knob says.

use tract_linalg::multithread::{set_default_executor, Executor};

/// The `threads` knob's default: every core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs every plan's kernels on `threads` threads from now on (1: inline on
/// the calling thread). Returns the count in effect: a pool that cannot be
/// built leaves kernels inline, logged, rather than stopping the agent.
#[cfg(feature = "kernel-threads")]
pub fn set_threads(threads: usize) -> usize {
    if threads <= 1 {
        set_default_executor(Executor::SingleThread);
        return 1;
    }
    // tract panics when the operating system refuses the threads.
    match std::panic::catch_unwind(|| Executor::multithread_with_name(threads, "ferry-kernel")) {
        Ok(pool) => {
            set_default_executor(pool);
            threads
        }
        Err(_) => {
            tracing::error!(
                threads,
                "could not start the kernel thread pool; running kernels on one thread"
            );
            set_default_executor(Executor::SingleThread);
            1
        }
    }
}

/// Built without `kernel-threads` (the ARM firmware targets): kernels always
/// run on the requesting thread, whatever the knob says.
#[cfg(not(feature = "kernel-threads"))]
pub fn set_threads(threads: usize) -> usize {
    if threads > 1 {
        tracing::info!(
            threads,
            "built without kernel-threads: tract's kernels run on the requesting thread"
        );
    }
    set_default_executor(Executor::SingleThread);
    1
}
