//! Naming the plugin and the call when a plugin aborts the process.
//!
//! A panic that escapes a plugin entry point not wrapped in `latflow_core::abi::guard` cannot
//! unwind across the `extern "C"` boundary: the plugin's copy of std aborts the process, and the
//! only message is its own ("panic in a function that cannot unwind", pointing into
//! latflow-core). The host cannot turn that into an error, but it can say whose call it was:
//! every plugin call marks the calling thread with the plugin's name and the method
//! ([`enter`]), and a SIGABRT handler, installed when the first plugin loads, prints
//!
//! ```text
//! latflow: plugin 'NAME' aborted the process in `METHOD` …
//! ```
//!
//! before the default action (the abort) proceeds. The handler only reads a thread-local
//! marker and calls `write(2)`, `signal` and `raise`, which are async-signal-safe.

use std::cell::Cell;

/// (plugin name bytes, their length, the method): valid while the marking [`InCall`] lives,
/// which borrows the name.
type Marker = (*const u8, usize, &'static str);

thread_local! {
    static CURRENT: Cell<Option<Marker>> = const { Cell::new(None) };
}

/// Marks this thread as inside `plugin`'s `call` until dropped (then restores the previous
/// mark, so that nested calls report the innermost).
pub struct InCall<'a> {
    previous: Option<Marker>,
    _name: std::marker::PhantomData<&'a str>,
}

/// Marks the current thread as calling `call` of `plugin` (see the module documentation).
pub fn enter<'a>(plugin: &'a str, call: &'static str) -> InCall<'a> {
    let previous = CURRENT.with(|c| c.replace(Some((plugin.as_ptr(), plugin.len(), call))));
    InCall { previous, _name: std::marker::PhantomData }
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Installs the SIGABRT handler once (unix only; elsewhere nothing happens).
pub fn install() {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let handler: extern "C" fn(libc::c_int) = on_abort;
            // SAFETY: installs a handler that only performs async-signal-safe operations.
            unsafe {
                libc::signal(libc::SIGABRT, handler as libc::sighandler_t);
            }
        });
    }
}

#[cfg(unix)]
extern "C" fn on_abort(signal: libc::c_int) {
    fn write_all(bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            // SAFETY: writes from a valid buffer to stderr.
            let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return;
            }
            rest = &rest[n as usize..];
        }
    }
    if let Some((ptr, len, call)) = CURRENT.try_with(Cell::get).ok().flatten() {
        // SAFETY: the marker's InCall borrows the name for as long as the mark is set.
        let name = unsafe { std::slice::from_raw_parts(ptr, len) };
        write_all(b"latflow: plugin '");
        write_all(name);
        write_all(b"' aborted the process in `");
        write_all(call.as_bytes());
        write_all(
            b"` (a panic or abort inside the plugin that was not turned into an error: \
              wrap each entry point in latflow_core::abi::guard)\n",
        );
    }
    // SAFETY: restores the default action and re-raises, so the process still ends by SIGABRT.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_nest_and_restore() {
        let current =
            || CURRENT.with(Cell::get).map(|(p, l, c)| (unsafe { std::slice::from_raw_parts(p, l) }.to_vec(), c));
        assert_eq!(current(), None);
        let outer_name = String::from("outer");
        let outer = enter(&outer_name, "hmc");
        assert_eq!(current(), Some((b"outer".to_vec(), "hmc")));
        {
            let _inner = enter("inner", "measure");
            assert_eq!(current(), Some((b"inner".to_vec(), "measure")));
        }
        assert_eq!(current(), Some((b"outer".to_vec(), "hmc")));
        drop(outer);
        assert_eq!(current(), None);
    }
}
