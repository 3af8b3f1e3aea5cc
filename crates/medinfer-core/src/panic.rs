//! Panics caught on purpose, kept quiet.
//!
//! medinfer runs code it does not own (DICOM codecs, engine bindings, user preprocessing in
//! the batch executor) under `catch_unwind`, so that a panic there becomes an error naming the
//! file or the request instead of killing a server or a batch run. Rust's default panic hook
//! still prints `thread '...' panicked at ...` and, with `RUST_BACKTRACE=1`, a backtrace, before
//! the unwind is caught: a user who gets a clean "error: x.dcm: ..." also got a page of
//! noise that looks like a crash. [`catch`] suppresses that print for panics raised on the
//! calling thread while it runs, and keeps the location for the error message instead; every
//! other panic goes to the hook that was installed before (Rust's default, a test harness's,
//! libFuzzer's).
//!
//! Limitation: a panic on a helper thread that a dependency spawns itself is not on the calling
//! thread, so its hook output is printed as before (the error still reaches the caller when the
//! dependency propagates it).

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// How many [`catch`] calls are active on this thread.
    static QUIET: Cell<u32> = const { Cell::new(0) };
    /// Where the last quiet panic on this thread happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) > 0 {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                LOCATION.with(|l| *l.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// A panic caught by [`catch`]: its message and where it was raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caught {
    /// The panic payload as text (`"unknown panic"` when it was neither `&str` nor `String`).
    pub message: String,
    /// `file:line` of the panic, when the hook saw it.
    pub location: Option<String>,
}

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(at) => write!(f, "{} (at {at})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Runs `f`, returning its value, or the panic it raised as [`Caught`] without printing it.
///
/// The closure is treated as unwind safe: callers use it where the state `f` touched is
/// discarded or rebuilt after a panic (a decoder's buffers, a pooled session that is
/// returned either way).
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    install();
    QUIET.with(|q| q.set(q.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    r.map_err(|p| {
        let message = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Caught {
            message,
            location: LOCATION.with(|l| l.borrow_mut().take()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_keeps_its_message_and_location() {
        let e = catch(|| -> u8 { panic!("boom {}", 7) }).unwrap_err();
        assert_eq!(e.message, "boom 7");
        assert!(
            e.location
                .as_deref()
                .is_some_and(|l| l.contains("panic.rs")),
            "{e:?}"
        );
        assert_eq!(catch(|| 5).unwrap(), 5);
        let nested = catch(|| catch(|| panic!("inner")).unwrap_err().message).unwrap();
        assert_eq!(nested, "inner");
    }

    /// Runs itself as a child process (the panic hook prints to the real stderr): the panic
    /// caught by `catch` must leave no text, one on another thread must still print.
    #[test]
    fn a_caught_panic_prints_nothing_and_others_still_print() {
        if std::env::var_os("MEDINFER_PANIC_CHILD").is_some() {
            assert!(catch(|| panic!("quiet please")).is_err());
            let loud = std::thread::spawn(|| panic!("loud on purpose")).join();
            assert!(loud.is_err());
            return;
        }
        let o = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "panic::tests::a_caught_panic_prints_nothing_and_others_still_print",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MEDINFER_PANIC_CHILD", "1")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{e}");
        assert!(e.contains("loud on purpose"), "{e}");
        assert!(!e.contains("quiet please"), "{e}");
    }

    #[test]
    fn the_quiet_count_returns_to_zero() {
        let _ = catch(|| panic!("x"));
        assert_eq!(QUIET.with(Cell::get), 0);
    }
}
