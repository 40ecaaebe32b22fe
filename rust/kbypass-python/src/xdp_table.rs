//! `XdpTable`: the rule table of `kbypass_core::xdp::table` (rules in BPF maps, changed at run
//! time; source blocks from handlers). Converts arguments and errors only.
//!
//! The core table is shared (`Arc`) with the ports opened on it (`XdpPort(program=table)`,
//! `port.rs`): `close()` lets go of this handle and of the attachments `attach()` made, and a
//! port keeps the program and maps until it closes. No lock is held while a call runs: the
//! handle's lock only guards taking a reference, so a handler on a pipeline's worker (GIL
//! held) and a `close()` on another thread never wait for each other.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use kbypass_core::xdp::table::{self, Action, NewEntry, TableOptions};
use kbypass_core::xdp::{self, AttachMode};
use kbypass_core::Error;
use pyo3::exceptions::{PyKeyError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{to_py, IntoPyResult};

pyo3::create_exception!(
    kbypass._core,
    TableFullError,
    PyOSError,
    "The XdpTable has no room (``errno.ENOSPC``): too many rules for ``max_rules`` or sources for ``max_blocks``."
);

pyo3::create_exception!(
    kbypass._core,
    UnknownEntryError,
    PyKeyError,
    "No entry with this id in the XdpTable (removed, swept after it expired, or never added)."
);

/// Core errors of table changes: ENOSPC → `TableFullError`, an unknown id → `UnknownEntryError`.
fn table_err(e: Error) -> PyErr {
    match e {
        Error::Os {
            errno: libc::ENOSPC,
            ..
        } => TableFullError::new_err((libc::ENOSPC, e.to_string())),
        Error::NotFound(msg) => UnknownEntryError::new_err(msg),
        e => to_py(e),
    }
}

fn action(s: &str) -> PyResult<Action> {
    s.parse().py()
}

fn addr(what: &str, s: &str) -> PyResult<IpAddr> {
    s.trim().parse().map_err(|_| {
        PyValueError::new_err(format!(
            "{what}={s:?} is not an IPv4 or IPv6 address (a single host, e.g. '198.18.0.7')"
        ))
    })
}

/// An entry from its Python parts: the filter as `filter=` takes it elsewhere (text, a `Rule`,
/// or a list of them; see `crate::xdp::filter_text`), but never None.
fn new_entry(
    filter: &Bound<'_, PyAny>,
    act: &str,
    priority: i32,
    expire: Option<f64>,
) -> PyResult<NewEntry> {
    let Some(text) = crate::xdp::filter_text(Some(filter))? else {
        return Err(PyValueError::new_err(
            "an entry needs a filter: use 'all' to match every frame",
        ));
    };
    Ok(NewEntry {
        rules: xdp::parse_filter(&text).py()?,
        action: action(act)?,
        priority,
        expires_ns: expire.map(table::deadline_in).transpose().py()?,
    })
}

/// A table of rules in BPF maps, and its XDP program.
#[pyclass(module = "kbypass._core", frozen)]
pub struct XdpTable {
    inner: RwLock<Option<Arc<table::XdpTable>>>,
    opts: TableOptions,
    info: kbypass_core::sys::bpf::ProgInfo,
    insn_count: usize,
    verifier_stats: String,
}

impl XdpTable {
    /// The open core table (the lock only for taking the reference), or `RuntimeError` after
    /// `close()`.
    pub(crate) fn table(&self) -> PyResult<Arc<table::XdpTable>> {
        let g = self
            .inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("XdpTable lock poisoned"))?;
        g.as_ref()
            .map(Arc::clone)
            .ok_or_else(|| PyRuntimeError::new_err("the XdpTable is closed: create a new one"))
    }

    /// Run `f` on the open table, or raise `RuntimeError` after `close()`.
    fn with<T>(&self, f: impl FnOnce(&table::XdpTable) -> PyResult<T>) -> PyResult<T> {
        let t = self.table()?;
        f(&t)
    }
}

#[pymethods]
impl XdpTable {
    #[new]
    #[pyo3(signature = (max_rules=256, max_blocks=65536, queues=64, default="pass", frags=false))]
    fn new(
        py: Python<'_>,
        max_rules: u32,
        max_blocks: u32,
        queues: u32,
        default: &str,
        frags: bool,
    ) -> PyResult<Self> {
        let opts = TableOptions {
            max_rules,
            max_blocks,
            queues,
            default: action(default)?,
            frags,
        };
        let t = py.detach(|| table::XdpTable::new(opts)).py()?;
        Ok(XdpTable {
            opts,
            info: t.info().clone(),
            insn_count: t.insn_count(),
            verifier_stats: t.verifier_stats().to_string(),
            inner: RwLock::new(Some(Arc::new(t))),
        })
    }

    /// Add an entry (filter text, action, priority, seconds until it expires); returns its id.
    #[pyo3(signature = (filter, action, priority=0, expire=None))]
    fn add(
        &self,
        py: Python<'_>,
        filter: &Bound<'_, PyAny>,
        action: &str,
        priority: i32,
        expire: Option<f64>,
    ) -> PyResult<u64> {
        let e = new_entry(filter, action, priority, expire)?;
        self.with(|t| py.detach(|| t.add(e)).map_err(table_err))
    }

    /// Add `(filter, action, priority, expire)` entries and remove ids in one change.
    #[pyo3(signature = (add, remove))]
    fn apply(
        &self,
        py: Python<'_>,
        add: Vec<(Bound<'_, PyAny>, String, i32, Option<f64>)>,
        remove: Vec<u64>,
    ) -> PyResult<Vec<u64>> {
        let add = add
            .iter()
            .map(|(f, a, p, e)| new_entry(f, a, *p, *e))
            .collect::<PyResult<Vec<_>>>()?;
        self.with(|t| py.detach(|| t.apply(add, &remove)).map_err(table_err))
    }

    /// Remove the entry `id`.
    fn remove(&self, py: Python<'_>, id: u64) -> PyResult<()> {
        self.with(|t| py.detach(|| t.remove(id)).map_err(table_err))
    }

    /// Push a decision about source `src` for `seconds` (None: until unblocked). The GIL is
    /// released for the map updates (and the grace period with `wait`).
    #[pyo3(signature = (src, seconds=Some(10.0), action="drop", wait=false))]
    fn block(
        &self,
        py: Python<'_>,
        src: &str,
        seconds: Option<f64>,
        action: &str,
        wait: bool,
    ) -> PyResult<()> {
        let (a, act) = (addr("src", src)?, self::action(action)?);
        self.with(|t| {
            py.detach(|| t.block(a, seconds, act, wait))
                .map_err(table_err)
        })
    }

    /// Block every source in `srcs` (address strings) at once; returns how many.
    #[pyo3(signature = (srcs, seconds=Some(10.0), action="drop", wait=false))]
    fn block_many(
        &self,
        py: Python<'_>,
        srcs: Vec<String>,
        seconds: Option<f64>,
        action: &str,
        wait: bool,
    ) -> PyResult<usize> {
        let addrs = srcs
            .iter()
            .map(|s| addr("src", s))
            .collect::<PyResult<Vec<_>>>()?;
        let act = self::action(action)?;
        self.with(|t| {
            py.detach(|| t.block_many(&addrs, seconds, act, wait))
                .map_err(table_err)
        })
    }

    /// Remove the block of `src`; False if there was none.
    fn unblock(&self, src: &str) -> PyResult<bool> {
        let a = addr("src", src)?;
        self.with(|t| t.unblock(a).py())
    }

    /// The blocks: dicts with addr, action, expires_in (seconds, None), packets, bytes.
    fn blocks<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let list = self.with(|t| t.blocks().py())?;
        list.iter()
            .map(|b| {
                let d = PyDict::new(py);
                d.set_item("addr", b.addr.to_string())?;
                d.set_item("action", b.block.action.as_str())?;
                d.set_item("expires_in", b.block.expires_ns.map(table::seconds_left))?;
                d.set_item("packets", b.counts.packets)?;
                d.set_item("bytes", b.counts.bytes)?;
                Ok(d)
            })
            .collect()
    }

    /// The entries in decision order: dicts with id, filter, action, priority, expires_in.
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let list = self.with(|t| t.entries().py())?;
        list.iter()
            .map(|e| {
                let d = PyDict::new(py);
                d.set_item("id", e.id)?;
                d.set_item("filter", xdp::format_filter(&e.rules))?;
                d.set_item("action", e.action.as_str())?;
                d.set_item("priority", e.priority)?;
                d.set_item("expires_in", e.expires_ns.map(table::seconds_left))?;
                Ok(d)
            })
            .collect()
    }

    /// `{id: (packets, bytes)}` per entry, summed over CPUs.
    fn stats(&self) -> PyResult<std::collections::BTreeMap<u64, (u64, u64)>> {
        self.with(|t| {
            Ok(t.stats()
                .py()?
                .into_iter()
                .map(|(id, c)| (id, (c.packets, c.bytes)))
                .collect())
        })
    }

    /// `(packets, bytes)` that got the default action.
    fn default_counts(&self) -> PyResult<(u64, u64)> {
        self.with(|t| {
            let c = t.default_counts().py()?;
            Ok((c.packets, c.bytes))
        })
    }

    /// Remove expired entries and blocks: `(entries, blocks)` removed.
    fn sweep(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        self.with(|t| {
            let s = py.detach(|| t.sweep()).py()?;
            Ok((s.entries, s.blocks))
        })
    }

    /// Sizes and bookkeeping: entries, rules, blocks, commits, map_writes, swept_*.
    fn table_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.with(|t| t.table_info().py())?;
        let d = PyDict::new(py);
        d.set_item("entries", i.entries)?;
        d.set_item("rules", i.rules)?;
        d.set_item("blocks", i.blocks)?;
        d.set_item("commits", i.commits)?;
        d.set_item("map_writes", i.map_writes)?;
        d.set_item("swept_entries", i.swept_entries)?;
        d.set_item("swept_blocks", i.swept_blocks)?;
        Ok(d)
    }

    /// Send queue `queue`'s "allow" frames to the AF_XDP socket with fd `fd`.
    fn set_socket(&self, queue: u32, fd: i32) -> PyResult<()> {
        self.with(|t| t.set_socket(queue, fd).py())
    }

    /// Stop sending queue `queue`'s frames to a socket.
    fn clear_socket(&self, queue: u32) -> PyResult<()> {
        self.with(|t| t.clear_socket(queue).py())
    }

    /// Attach to `ifname`: dict with ifname, ifindex, mode, via, prog_id, notes.
    #[pyo3(signature = (ifname, mode="auto", force=false))]
    fn attach<'py>(
        &self,
        py: Python<'py>,
        ifname: &str,
        mode: &str,
        force: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mode: AttachMode = mode.parse().py()?;
        let a = self.with(|t| py.detach(|| t.attach(ifname, mode, force)).py())?;
        let d = PyDict::new(py);
        d.set_item("ifname", a.ifname)?;
        d.set_item("ifindex", a.ifindex)?;
        d.set_item("mode", a.mode)?;
        d.set_item("via", a.via)?;
        d.set_item("prog_id", a.prog_id)?;
        d.set_item("notes", a.notes)?;
        Ok(d)
    }

    /// Detach from `ifname` (None: everywhere); returns how many.
    #[pyo3(signature = (ifname=None))]
    fn detach(&self, py: Python<'_>, ifname: Option<&str>) -> PyResult<usize> {
        self.with(|t| py.detach(|| t.detach(ifname)).py())
    }

    /// Keep the program attached to `ifname` while the returned hold lives (as a port on the
    /// table does): attached now if it is not there yet, detached when the last hold goes and
    /// `attach()` did not ask for it.
    #[pyo3(signature = (ifname, mode="auto", force=false))]
    fn hold(
        slf: PyRef<'_, Self>,
        py: Python<'_>,
        ifname: &str,
        mode: &str,
        force: bool,
    ) -> PyResult<TableHold> {
        let mode: AttachMode = mode.parse().py()?;
        let t = slf.table()?;
        let h = py.detach(|| t.hold(ifname, mode, force)).py()?;
        Ok(TableHold {
            ifname: ifname.to_string(),
            mode: h.mode().as_str(),
            notes: h.notes().to_vec(),
            hold: Mutex::new(Some(h)),
        })
    }

    /// Interfaces it is attached to.
    fn attached(&self) -> PyResult<Vec<String>> {
        self.with(|t| t.attached().py())
    }

    /// Run the program on `frame` (queue 0, a socket present): (verdict, ns per run).
    #[pyo3(signature = (frame, repeat=1))]
    fn test_run(&self, py: Python<'_>, frame: &[u8], repeat: u32) -> PyResult<(u32, u32)> {
        let frame = frame.to_vec();
        let r = self.with(|t| py.detach(|| t.test_run(&frame, repeat)).py())?;
        Ok((r.retval, r.duration_ns))
    }

    /// Kernel program id (never changes: rules live in maps).
    #[getter]
    fn id(&self) -> u32 {
        self.info.id
    }

    /// Program name ("kbypass_table").
    #[getter]
    fn name(&self) -> String {
        self.info.name.clone()
    }

    /// Kernel tag of the program.
    #[getter]
    fn tag(&self) -> String {
        self.info.tag.clone()
    }

    /// Number of BPF instructions.
    #[getter]
    fn insn_count(&self) -> usize {
        self.insn_count
    }

    /// The verifier's statistics from loading the program.
    #[getter]
    fn verifier_stats(&self) -> String {
        self.verifier_stats.clone()
    }

    /// Rule slots.
    #[getter]
    fn max_rules(&self) -> u32 {
        self.opts.max_rules
    }

    /// Block slots.
    #[getter]
    fn max_blocks(&self) -> u32 {
        self.opts.max_blocks
    }

    /// XSKMAP slots.
    #[getter]
    fn queues(&self) -> u32 {
        self.opts.queues
    }

    /// The default action.
    #[getter]
    fn default(&self) -> &'static str {
        self.opts.default.as_str()
    }

    /// Whether the frags-capable variant was loaded.
    #[getter]
    fn frags(&self) -> bool {
        self.opts.frags
    }

    /// The XSKMAP fd.
    #[getter]
    fn map_fd(&self) -> PyResult<i32> {
        self.with(|t| Ok(t.xsk_map().raw()))
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        let g = self
            .inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("XdpTable lock poisoned"))?;
        Ok(g.is_none())
    }

    /// Let go of this handle: detach what `attach()` attached and close the program and maps,
    /// unless an open port still uses the table (the port keeps them until it closes).
    /// Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let t = {
            let mut g = self
                .inner
                .write()
                .map_err(|_| PyRuntimeError::new_err("XdpTable lock poisoned"))?;
            g.take()
        };
        if let Some(t) = t {
            // The last reference (dropped here or by the last port) closes the maps.
            py.detach(move || t.detach(None).map(|_| ())).py()?;
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "XdpTable(id={}, max_rules={}, max_blocks={}, default={:?})",
            self.info.id,
            self.opts.max_rules,
            self.opts.max_blocks,
            self.opts.default.as_str()
        )
    }
}

/// A hold on a table's attachment to one interface (`XdpTable.hold`): the program stays
/// attached while it lives; `release()` (or its end) lets go.
#[pyclass(module = "kbypass._core")]
pub struct TableHold {
    ifname: String,
    mode: &'static str,
    notes: Vec<String>,
    hold: Mutex<Option<table::TableHold>>,
}

#[pymethods]
impl TableHold {
    /// Let go (detaches when it was the last use of an attachment nobody asked `attach()`
    /// for). Idempotent.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let h = self.hold.lock().unwrap_or_else(|e| e.into_inner()).take();
        match h {
            Some(h) => py.detach(move || h.release()).py(),
            None => Ok(()),
        }
    }

    /// Whether it still holds.
    #[getter]
    fn held(&self) -> bool {
        self.hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The interface.
    #[getter]
    fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The mode the program runs in there ("native", "generic", "hw").
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode
    }

    /// Notes from attaching (a fallback, an attachment found in place).
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "TableHold(ifname={:?}, mode={:?}, held={})",
            self.ifname,
            self.mode,
            self.held()
        )
    }
}

/// Register this area's names.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<XdpTable>()?;
    m.add_class::<TableHold>()?;
    m.add("TableFullError", py.get_type::<TableFullError>())?;
    m.add("UnknownEntryError", py.get_type::<UnknownEntryError>())?;
    Ok(())
}
