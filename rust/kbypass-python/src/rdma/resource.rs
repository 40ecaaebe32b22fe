//! The base class every RDMA object extends: `close()`, `__enter__` and `__exit__`, written
//! once (pyverbs' `PyverbsCM`).
//!
//! A subclass (directly, or through [`ReceiveQueue`](super::recv::ReceiveQueue)) owns its
//! core object in an `Option` (`inner`) and declares that with [`owner!`]; `close()` empties
//! the `Option`, so the core object is dropped then (or later, if a child still holds it: core
//! objects keep their parents alive), and a method that needs it raises
//! `RuntimeError("this … is closed")` from then on.
//!
//! User-space objects (a context of the RoCEv2 engine and what is made from it) also track
//! their children, pyverbs-style: `close()` closes them first, so closing the context
//! releases the engine (its socket, XDP program and thread) whatever Python still holds.
//! libibverbs objects do not: their children keep working after a parent's `close()`.

use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::False;
use pyo3::types::{PyWeakrefMethods, PyWeakrefReference};
use pyo3::PyClass;

/// Base class of the RDMA objects: a context manager whose ``close()`` (idempotent) releases
/// the object's hold on its verbs object.
#[pyclass(subclass, frozen, weakref, module = "kbypass._core.rdma")]
pub struct Resource {
    /// Empties the subclass's slot: [`release::<T>`] for the `T` that was created.
    release: fn(&Bound<'_, PyAny>) -> PyResult<()>,
    /// The objects made from this one (weakly), closed before it; `None`: not tracked. The
    /// root of a tracked tree (the context) holds every descendant here too, so one whose
    /// parent Python let go of (a PD no name holds any more) is still closed with the root.
    children: Mutex<Option<Vec<Py<PyWeakrefReference>>>>,
    /// The root of the tracked tree this object belongs to (weakly); `None` for a root.
    root: Mutex<Option<Py<PyWeakrefReference>>>,
}

impl Resource {
    fn children(&self) -> std::sync::MutexGuard<'_, Option<Vec<Py<PyWeakrefReference>>>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn root(&self) -> std::sync::MutexGuard<'_, Option<Py<PyWeakrefReference>>> {
        self.root.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Resource {
    /// Release this object's hold on its verbs object (a user-space object closes the objects
    /// made from it first); calling it again does nothing.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let kids = slf.get().children().as_mut().map(std::mem::take);
        let mut failed = None;
        // The newest first: an object is made after those it is made from.
        for w in kids.into_iter().flatten().rev() {
            if let Some(child) = w.bind(slf.py()).upgrade() {
                if let Err(e) = child.call_method0("close") {
                    failed.get_or_insert(e);
                }
            }
        }
        (slf.get().release)(slf.as_any())?;
        failed.map_or(Ok(()), Err)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        slf: &Bound<'_, Self>,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Self::close(slf)
    }
}

/// A Python RDMA class that owns one core object until `close()`.
pub trait Owner: PyClass<Frozen = False> {
    /// The core object.
    type Core;
    /// The slot holding it (`None` once closed).
    fn slot(&self) -> &Option<Self::Core>;
    /// The same, to empty it.
    fn slot_mut(&mut self) -> &mut Option<Self::Core>;

    /// What else `close()` lets go of (e.g. a held context), besides the core object.
    fn on_release(&mut self) {}

    /// The core object, or `RuntimeError("this <class> is closed")`.
    fn get(&self) -> PyResult<&Self::Core> {
        self.slot().as_ref().ok_or_else(|| {
            PyRuntimeError::new_err(format!("this {} is closed", <Self as PyClass>::NAME))
        })
    }
}

/// `impl Owner for $class` over its `inner: Option<$core>` field.
macro_rules! owner {
    ($class:ty, $core:ty) => {
        impl $crate::rdma::resource::Owner for $class {
            type Core = $core;
            fn slot(&self) -> &Option<$core> {
                &self.inner
            }
            fn slot_mut(&mut self) -> &mut Option<$core> {
                &mut self.inner
            }
        }
    };
}
pub(crate) use owner;

fn release<T: Owner>(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let obj = obj.cast::<T>()?;
    let mut this = obj.try_borrow_mut()?;
    *this.slot_mut() = None;
    this.on_release();
    Ok(())
}

/// Have `obj` close the objects made from it first when it is closed (and they theirs).
pub fn track_children(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    obj.cast::<Resource>()?
        .get()
        .children()
        .get_or_insert_with(Vec::new);
    Ok(())
}

/// `child` was made from `parent`: when `parent` tracks its children, `child` is closed
/// before it (and tracks its own).
pub fn adopt(parent: &Bound<'_, PyAny>, child: &Bound<'_, PyAny>) -> PyResult<()> {
    let parent = parent.cast::<Resource>()?;
    let mut kids = parent.get().children();
    let Some(list) = kids.as_mut() else {
        return Ok(());
    };
    list.retain(|w| w.bind(child.py()).upgrade().is_some());
    list.push(PyWeakrefReference::new(child)?.unbind());
    drop(kids);
    track_children(child)?;
    let py = child.py();
    let root = match parent.get().root().as_ref() {
        None => parent.clone().into_any(),
        Some(w) => match w.bind(py).upgrade() {
            Some(r) => r,
            None => return Ok(()), // the root is gone: nothing to close this with
        },
    };
    if !root.is(parent) {
        let root_res = root.cast::<Resource>()?;
        if let Some(all) = root_res.get().children().as_mut() {
            all.retain(|w| w.bind(py).upgrade().is_some());
            all.push(PyWeakrefReference::new(child)?.unbind());
        }
    }
    *child.cast::<Resource>()?.get().root() = Some(PyWeakrefReference::new(&root)?.unbind());
    Ok(())
}

/// A new Python object of class `T` (a direct [`Resource`] subclass) over `obj`.
pub fn new<T: Owner + PyClass<BaseType = Resource>>(py: Python<'_>, obj: T) -> PyResult<Py<T>> {
    Py::new(py, initializer(obj))
}

/// The initializer of `obj` and its [`Resource`] base, for `#[new]`.
pub fn initializer<T: Owner + PyClass<BaseType = Resource>>(obj: T) -> PyClassInitializer<T> {
    PyClassInitializer::from(base::<T>()).add_subclass(obj)
}

/// [`initializer`] of an object that tracks its children from the start when `track`.
pub fn initializer_tracking<T: Owner + PyClass<BaseType = Resource>>(
    obj: T,
    track: bool,
) -> PyClassInitializer<T> {
    let mut b = base::<T>();
    if track {
        b.children = Mutex::new(Some(Vec::new()));
    }
    PyClassInitializer::from(b).add_subclass(obj)
}

/// The [`Resource`] part of a `T`, whose `close()` empties `T`'s slot.
pub fn base<T: Owner>() -> Resource {
    Resource {
        release: release::<T>,
        children: Mutex::new(None),
        root: Mutex::new(None),
    }
}
