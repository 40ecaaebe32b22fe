//! XDP programs: rule parsing, loading, attaching, test runs, capability probe; and the one
//! filter normaliser every `filter=` argument goes through (`XdpProgram`, `XdpSocket`,
//! `XdpPort`, `capture`).

use std::sync::{Mutex, RwLock};

use kbypass_core::xdp::{self, AttachMode, IpVersion, ProgramOptions, Rule, Vlan};
use kbypass_core::Error;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::IntoPyResult;

/// The filter text of one filter item: a string, or a rule object that gives its text through
/// `__kbypass_filter__()` (`kbypass.Rule` does).
fn item_text(item: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    if let Ok(s) = item.cast::<PyString>() {
        return Ok(Some(s.to_str()?.to_string()));
    }
    let proto = pyo3::intern!(item.py(), "__kbypass_filter__");
    if item.hasattr(proto)? {
        return Ok(Some(item.call_method0(proto)?.extract()?));
    }
    Ok(None)
}

/// A `filter=` argument as filter text: None (every frame), filter text, a `Rule`, or a list of
/// them (ORed). None for None.
pub fn filter_text(filter: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(f) = filter.filter(|f| !f.is_none()) else {
        return Ok(None);
    };
    if let Some(t) = item_text(f)? {
        return Ok(Some(t));
    }
    let Ok(items) = f.try_iter() else {
        return Err(PyTypeError::new_err(format!(
            "filter must be a str, a Rule, a list of them, or None; got {}",
            f.get_type().name()?
        )));
    };
    let mut parts = Vec::new();
    for item in items {
        let item = item?;
        match item_text(&item)? {
            Some(t) => parts.push(t),
            None => {
                return Err(PyTypeError::new_err(format!(
                    "filter items must be str or Rule, got {}",
                    item.get_type().name()?
                )))
            }
        }
    }
    if parts.is_empty() {
        return Err(PyValueError::new_err(
            "the filter list is empty: pass filter=None to redirect every frame",
        ));
    }
    Ok(Some(parts.join(" or ")))
}

/// A `filter=` argument as rules (empty: every frame).
pub fn filter_rules(filter: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Rule>> {
    match filter_text(filter)? {
        None => Ok(Vec::new()),
        Some(t) => xdp::parse_filter(&t).py(),
    }
}

fn rule_to_dict<'py>(py: Python<'py>, r: &Rule) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(
        "ip",
        r.ip.map(|v| match v {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }),
    )?;
    d.set_item("proto", r.proto)?;
    d.set_item("src", r.src.map(|p| p.to_string()))?;
    d.set_item("dst", r.dst.map(|p| p.to_string()))?;
    d.set_item("sport", r.sport)?;
    d.set_item("dport", r.dport)?;
    d.set_item("ethertype", r.ethertype)?;
    let vlan: Option<i64> = match r.vlan {
        Vlan::Any => None,
        Vlan::Tagged => Some(-1),
        Vlan::Id(v) => Some(i64::from(v)),
    };
    d.set_item("vlan", vlan)?;
    d.set_item("text", r.to_string())?;
    Ok(d)
}

/// Parse a filter into rule dictionaries (keys: ip, proto, src, dst, sport, dport, ethertype,
/// vlan, text).
#[pyfunction]
pub fn parse_filter<'py>(py: Python<'py>, text: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let rules = xdp::parse_filter(text).py()?;
    rules.iter().map(|r| rule_to_dict(py, r)).collect()
}

/// Validate one rule given by fields and return its canonical filter text.
#[pyfunction]
#[pyo3(signature = (*, ip=None, proto=None, src=None, dst=None, sport=None, dport=None, ethertype=None, vlan=None))]
#[allow(clippy::too_many_arguments)]
pub fn rule_text(
    ip: Option<u8>,
    proto: Option<u8>,
    src: Option<&str>,
    dst: Option<&str>,
    sport: Option<(u16, u16)>,
    dport: Option<(u16, u16)>,
    ethertype: Option<u16>,
    vlan: Option<i32>,
) -> PyResult<String> {
    let r = xdp::RuleFields {
        ip,
        proto,
        src,
        dst,
        sport,
        dport,
        ethertype,
        vlan,
    }
    .build()
    .py()?;
    Ok(r.to_string())
}

/// A loaded XDP program and its XSKMAP (`kbypass.XdpProgram` adds the Pythonic parts).
#[pyclass(module = "kbypass._core", frozen, subclass)]
pub struct XdpProgram {
    inner: RwLock<Option<xdp::XdpProgram>>,
    filter: Option<String>,
    info: kbypass_core::sys::bpf::ProgInfo,
    frags: bool,
    queues: u32,
    insn_count: usize,
    form: &'static str,
}

impl XdpProgram {
    /// Run `f` on the open program, or raise `RuntimeError` after `close()`.
    fn with<T>(&self, f: impl FnOnce(&xdp::XdpProgram) -> kbypass_core::Result<T>) -> PyResult<T> {
        let g = self
            .inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("XdpProgram lock poisoned"))?;
        match g.as_ref() {
            Some(p) => f(p).py(),
            None => Err(PyRuntimeError::new_err(
                "the XdpProgram is closed: create a new one",
            )),
        }
    }
}

#[pymethods]
impl XdpProgram {
    #[new]
    #[pyo3(signature = (filter=None, frags=false, queues=64))]
    fn new(
        py: Python<'_>,
        filter: Option<&Bound<'_, PyAny>>,
        frags: bool,
        queues: u32,
    ) -> PyResult<Self> {
        let rules = filter_rules(filter)?;
        let canonical = (!rules.is_empty()).then(|| xdp::format_filter(&rules));
        let inner = py
            .detach(|| xdp::XdpProgram::new(&rules, ProgramOptions { frags, queues }))
            .py()?;
        Ok(XdpProgram {
            filter: canonical,
            info: inner.info().clone(),
            frags: inner.frags(),
            queues: inner.queues(),
            insn_count: inner.insn_count(),
            form: inner.form().as_str(),
            inner: RwLock::new(Some(inner)),
        })
    }

    /// Kernel program id.
    #[getter]
    fn id(&self) -> u32 {
        self.info.id
    }

    /// Program name ("kbypass_xsk", "kbypass_filter", ...).
    #[getter]
    fn name(&self) -> String {
        self.info.name.clone()
    }

    /// The kernel's tag of the program (16 hex digits).
    #[getter]
    fn tag(&self) -> String {
        self.info.tag.clone()
    }

    /// Canonical text of the filter, or None for "redirect everything".
    #[getter]
    fn filter(&self) -> Option<String> {
        self.filter.clone()
    }

    /// Whether the program is frags-capable (multi-buffer).
    #[getter]
    fn frags(&self) -> bool {
        self.frags
    }

    /// XSKMAP slots.
    #[getter]
    fn queues(&self) -> u32 {
        self.queues
    }

    /// Number of BPF instructions.
    #[getter]
    fn insn_count(&self) -> usize {
        self.insn_count
    }

    /// "flags-default" (kernel ≥ 5.3) or "lookup-first".
    #[getter]
    fn redirect_form(&self) -> &'static str {
        self.form
    }

    /// The XSKMAP fd (for sockets registering themselves).
    #[getter]
    fn map_fd(&self) -> PyResult<i32> {
        self.with(|p| Ok(p.map().raw()))
    }

    /// Route RX queue `queue` to the AF_XDP socket fd `fd`.
    fn set_socket(&self, queue: u32, fd: i32) -> PyResult<()> {
        self.with(|p| p.set_socket(queue, fd))
    }

    /// Stop routing `queue` to a socket.
    fn clear_socket(&self, queue: u32) -> PyResult<()> {
        self.with(|p| p.clear_socket(queue))
    }

    /// Run the program `repeat` times on `frame` (queue 0, a socket present): returns (the
    /// XDP action, nanoseconds per run as the kernel measured).
    #[pyo3(signature = (frame, repeat=1))]
    fn run(&self, py: Python<'_>, frame: Vec<u8>, repeat: u32) -> PyResult<(u32, u32)> {
        if repeat == 0 {
            return Err(PyValueError::new_err("repeat=0 must be 1..2**32-1"));
        }
        let r = py.detach(|| self.with(|p| p.test_run(&frame, repeat)))?;
        Ok((r.retval, r.duration_ns))
    }

    /// Attach to `ifname`; see `XdpAttachment`.
    #[pyo3(signature = (ifname, mode="auto", force=false))]
    fn attach(
        &self,
        py: Python<'_>,
        ifname: &str,
        mode: &str,
        force: bool,
    ) -> PyResult<XdpAttachment> {
        let mode: AttachMode = mode.parse().py()?;
        let a = py.detach(|| self.with(|p| xdp::attach(p, ifname, mode, force)))?;
        Ok(XdpAttachment::wrap(a))
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        let g = self
            .inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("XdpProgram lock poisoned"))?;
        Ok(g.is_none())
    }

    /// Close the program and its XSKMAP fds (idempotent). Attachments keep the kernel program
    /// alive until they detach.
    fn close(&self) -> PyResult<()> {
        let mut g = self
            .inner
            .write()
            .map_err(|_| PyRuntimeError::new_err("XdpProgram lock poisoned"))?;
        g.take();
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close()?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "XdpProgram(id={}, name={:?}, filter={:?}, frags={})",
            self.info.id,
            self.info.name,
            self.filter.as_deref().unwrap_or("<all>"),
            if self.frags { "True" } else { "False" }
        )
    }
}

/// An attached program; detaches on `detach()`, on exit of a `with` block, or when collected.
#[pyclass(module = "kbypass._core", frozen)]
pub struct XdpAttachment {
    inner: Mutex<xdp::XdpAttachment>,
    mode: &'static str,
    via: &'static str,
    ifname: String,
    ifindex: u32,
    prog_id: u32,
    notes: Vec<String>,
}

impl XdpAttachment {
    fn wrap(a: xdp::XdpAttachment) -> Self {
        XdpAttachment {
            mode: a.mode().as_str(),
            via: a.via(),
            ifname: a.ifname().to_string(),
            ifindex: a.ifindex(),
            prog_id: a.prog_id(),
            notes: a.notes().to_vec(),
            inner: Mutex::new(a),
        }
    }

    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, xdp::XdpAttachment>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("XdpAttachment lock poisoned"))
    }
}

#[pymethods]
impl XdpAttachment {
    /// "native", "generic" or "hw": what the kernel reports.
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode
    }

    /// "bpf_link" or "netlink".
    #[getter]
    fn via(&self) -> &'static str {
        self.via
    }

    /// Interface name.
    #[getter]
    fn ifname(&self) -> String {
        self.ifname.clone()
    }

    /// Interface index.
    #[getter]
    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Attached program id.
    #[getter]
    fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// Why auto did not get native mode, what was replaced, and similar.
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// Whether it is still attached.
    #[getter]
    fn attached(&self) -> PyResult<bool> {
        Ok(self.lock()?.is_attached())
    }

    /// Detach now (idempotent).
    fn detach(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| match self.inner.lock() {
            Ok(mut g) => g.detach(),
            Err(_) => Err(Error::State("XdpAttachment lock poisoned".into())),
        })
        .py()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.detach(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!(
            "XdpAttachment(ifname={:?}, mode={:?}, via={:?}, prog_id={}, attached={})",
            self.ifname,
            self.mode,
            self.via,
            self.prog_id,
            if self.lock()?.is_attached() {
                "True"
            } else {
                "False"
            }
        ))
    }
}

/// The XDP programs attached to `ifname`: list of dicts (prog_id, mode, name, tag, link_id, ours).
#[pyfunction]
pub fn xdp_query<'py>(py: Python<'py>, ifname: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let progs = py.detach(|| xdp::query(ifname)).py()?;
    progs
        .iter()
        .map(|p| {
            let d = PyDict::new(py);
            d.set_item("prog_id", p.attached.prog_id)?;
            d.set_item("mode", p.attached.mode.as_str())?;
            d.set_item("name", p.info.as_ref().map(|i| i.name.clone()))?;
            d.set_item("tag", p.info.as_ref().map(|i| i.tag.clone()))?;
            d.set_item("link_id", p.link_id)?;
            d.set_item("ours", p.is_ours())?;
            Ok(d)
        })
        .collect()
}

/// What this kernel supports for XDP/AF_XDP (for `kbypass info`).
#[pyfunction]
pub fn probe_xdp<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let r = py.detach(xdp::probe);
    let d = PyDict::new(py);
    d.set_item("kernel", &r.kernel)?;
    for (k, c) in [
        ("af_xdp_socket", &r.af_xdp_socket),
        ("prog_load", &r.prog_load),
        ("frags", &r.frags),
        ("xdp_link", &r.xdp_link),
        ("live_frames", &r.live_frames),
    ] {
        let e = PyDict::new(py);
        e.set_item("ok", c.ok)?;
        e.set_item("detail", &c.detail)?;
        d.set_item(k, e)?;
    }
    d.set_item("redirect_form", r.redirect_form.map(|f| f.as_str()))?;
    Ok(d)
}

/// The in-kernel sockperf echo (`kbypass_core::xdp::UdpEcho`): answers sockperf's UDP
/// requests with `XDP_TX`, the floor of the latency bench.
#[pyclass(module = "kbypass._core", frozen)]
pub struct UdpEcho {
    inner: xdp::UdpEcho,
}

#[pymethods]
impl UdpEcho {
    #[new]
    #[pyo3(signature = (port=11111))]
    fn new(py: Python<'_>, port: u16) -> PyResult<Self> {
        let inner = py.detach(|| xdp::UdpEcho::new(port)).py()?;
        Ok(UdpEcho { inner })
    }

    /// Attach to `ifname`; see `XdpAttachment`.
    #[pyo3(signature = (ifname, mode="auto", force=false))]
    fn attach(
        &self,
        py: Python<'_>,
        ifname: &str,
        mode: &str,
        force: bool,
    ) -> PyResult<XdpAttachment> {
        let mode: AttachMode = mode.parse().py()?;
        let e = &self.inner;
        let a = py
            .detach(|| xdp::attach_fd(e.prog(), e.info().id, ifname, mode, force))
            .py()?;
        Ok(XdpAttachment::wrap(a))
    }

    /// Run once on `frame` (no interface touched): (verdict, the frame as left).
    fn test_run<'py>(
        &self,
        py: Python<'py>,
        frame: Vec<u8>,
    ) -> PyResult<(u32, Bound<'py, pyo3::types::PyBytes>)> {
        let (r, out) = py.detach(|| self.inner.test_run(&frame)).py()?;
        Ok((r.retval, pyo3::types::PyBytes::new(py, &out)))
    }

    /// The UDP port it answers.
    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    /// Kernel program id.
    #[getter]
    fn id(&self) -> u32 {
        self.inner.info().id
    }

    /// Number of BPF instructions.
    #[getter]
    fn insn_count(&self) -> usize {
        self.inner.insn_count()
    }

    fn __repr__(&self) -> String {
        format!(
            "UdpEcho(port={}, id={}, insns={})",
            self.inner.port(),
            self.inner.info().id,
            self.inner.insn_count()
        )
    }
}

/// Register this area's names.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<XdpProgram>()?;
    m.add_class::<UdpEcho>()?;
    m.add_class::<XdpAttachment>()?;
    m.add_function(wrap_pyfunction!(parse_filter, m)?)?;
    m.add_function(wrap_pyfunction!(rule_text, m)?)?;
    m.add_function(wrap_pyfunction!(xdp_query, m)?)?;
    m.add_function(wrap_pyfunction!(probe_xdp, m)?)?;
    Ok(())
}
