//! Ctrl-C for the RDMA calls that wait with the GIL released (the tools' TCP exchanges, the
//! connection manager, the measurement and perftest loops): the core call gets a
//! [`Cancel`] that takes the GIL back every `CANCEL_EVERY` (50 ms) to run Python's signal
//! handlers, so a KeyboardInterrupt stops it there and is raised, as with the ports.

use std::cell::RefCell;

use kbypass_core::rdma::Cancel;
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// Run `f` with the GIL released, handing it a [`Cancel`] that checks Python's signals
/// (they run on the main thread only: elsewhere it never takes the GIL). The exception a
/// signal handler raised (KeyboardInterrupt for Ctrl-C) is raised instead of `f`'s result.
pub fn detach<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel<'_>) -> kbypass_core::Result<T> + Send,
{
    let threading = py.import("threading")?;
    let on_main = threading
        .call_method0("main_thread")?
        .is(&threading.call_method0("current_thread")?);
    let (result, pending) = py.detach(|| {
        let pending: RefCell<Option<PyErr>> = RefCell::new(None);
        let ask = || {
            on_main
                && Python::attach(|py| match py.check_signals() {
                    Ok(()) => false,
                    Err(e) => {
                        *pending.borrow_mut() = Some(e);
                        true
                    }
                })
        };
        let result = f(&Cancel::new(&ask));
        (result, pending.into_inner())
    });
    match pending {
        Some(e) => Err(e),
        None => result.py(),
    }
}
