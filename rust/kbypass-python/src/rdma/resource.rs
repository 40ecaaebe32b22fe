//! The base class every RDMA object extends: `close()`, `__enter__` and `__exit__`, written
//! once (pyverbs' `PyverbsCM`).
//!
//! A subclass (directly, or through [`ReceiveQueue`](super::recv::ReceiveQueue)) owns its
//! core object in an `Option` (`inner`) and declares that with [`owner!`]; `close()` empties
//! the `Option`, so the core object is dropped then (or later, if a child still holds it: core
//! objects keep their parents alive), and a method that needs it raises
//! `RuntimeError("this … is closed")` from then on.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::False;
use pyo3::PyClass;

/// Base class of the RDMA objects: a context manager whose ``close()`` (idempotent) releases
/// the object's hold on its verbs object.
#[pyclass(subclass, frozen, module = "kbypass._core.rdma")]
pub struct Resource {
    /// Empties the subclass's slot: [`release::<T>`] for the `T` that was created.
    release: fn(&Bound<'_, PyAny>) -> PyResult<()>,
}

#[pymethods]
impl Resource {
    /// Release this object's hold on its verbs object; calling it again does nothing.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        (slf.get().release)(slf.as_any())
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
    *obj.cast::<T>()?.try_borrow_mut()?.slot_mut() = None;
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

/// The [`Resource`] part of a `T`, whose `close()` empties `T`'s slot.
pub fn base<T: Owner>() -> Resource {
    Resource {
        release: release::<T>,
    }
}
