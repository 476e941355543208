//! The one tokio runtime guard's async clients (sqlx, the AWS SDK, reqwest) run on, and the
//! bridges from guard's synchronous code into it.
//!
//! guard's core is synchronous; async stays behind these functions.

use std::future::Future;
use std::sync::OnceLock;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Run an async operation (sqlx) to completion on guard's runtime.
pub fn block_on<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

/// Run `f` to completion on guard's runtime, from sync code — also when the caller is itself
/// inside the runtime (a store method called from an async block): the future then runs on a
/// helper thread, since a runtime cannot be blocked on from within itself.
pub fn wait<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| block_on(f)).join().expect("S3 request thread panicked"))
    } else {
        block_on(f)
    }
}

/// A handle to spawn tasks on: the current runtime's, else guard's.
pub fn handle() -> tokio::runtime::Handle {
    tokio::runtime::Handle::try_current().unwrap_or_else(|_| block_on(async { tokio::runtime::Handle::current() }))
}
