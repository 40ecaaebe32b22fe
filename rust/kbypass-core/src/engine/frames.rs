//! A batch's frames lent, for the length of a handler call, to code that cannot borrow the
//! [`BatchCtx`]: a binding's batch object, called back from inside the handler (possibly from
//! another thread the handler waits for).
//!
//! [`BatchFrames::lend`] copies the batch's descriptors and takes the `BatchCtx` by `&mut` for
//! as long as the returned [`Lent`] lives, so nothing reaches the frames through the context
//! meanwhile; edits and reads go through the lease, one call at a time (its mutex), by
//! descriptor index and mask. Ending the lease waits for a call in flight and closes it: a
//! batch object kept past its handler gets an error, never a frame that moved on.
//!
//! The lease also builds frames ([`super::build`]): reshapes change its copy of the
//! descriptors, and emits take free frames from the batch socket's cache, which the lease
//! borrows from the context for the call (the socket itself stays borrowed by the context).
//! When the lease ends the descriptors, the emitted frames and the cache go back to the
//! context, so the worker sends what the handler built.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::build::{self, EmitRules, Emitted, Reshape};
use super::worker::{emit_limit, BatchCtx};
use crate::error::{Error, Result};
use crate::mem::PoolCache;
use crate::packet::parse::{ETH_P_8021AD, ETH_P_8021Q};
use crate::packet::reply::Reply;
use crate::packet::{edit, parse, PacketMeta};
use crate::sys::xdp::{XdpDesc, XDP_TX_METADATA};
use crate::xsk::{TxAsk, Umem};

mod emit;
mod txreq;

/// Which frames of a lease a call reaches.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'m> {
    /// Every frame.
    All,
    /// Those where the mask (one entry per frame) is true.
    Mask(&'m [bool]),
    /// Frame `i` alone.
    One(usize),
}

impl<'m> From<Option<&'m [bool]>> for Pick<'m> {
    fn from(mask: Option<&'m [bool]>) -> Self {
        mask.map_or(Pick::All, Pick::Mask)
    }
}

impl Pick<'_> {
    #[inline]
    fn picks(self, i: usize) -> bool {
        match self {
            Pick::All => true,
            Pick::Mask(m) => m[i],
            Pick::One(j) => i == j,
        }
    }
}

/// A new length per frame for [`BatchFrames::set_len`].
#[derive(Debug, Clone, Copy)]
pub enum NewLen<'v> {
    /// The same length for every picked frame.
    Each(u32),
    /// One length per frame of the batch (`v[i]` for frame `i`).
    PerFrame(&'v [u32]),
}

/// The batch's columns, rewritten for the frames a reshape changed (see
/// [`BatchCtx::write_columns`]).
pub struct Columns<'c> {
    /// Packet lengths, one per frame.
    pub lengths: &'c mut [u32],
    /// UMEM addresses of the packet data, one per frame.
    pub addrs: &'c mut [u64],
    /// Parsed header records, 64 bytes per frame.
    pub headers: &'c mut [u8],
}

impl Columns<'_> {
    /// An error unless each column has room for `n` frames.
    fn check(&self, n: usize) -> Result<()> {
        if self.lengths.len() < n || self.addrs.len() < n || self.headers.len() < 64 * n {
            return Err(Error::invalid(format!(
                "columns for {} lengths, {} addresses and {} header bytes cannot hold a batch of {n}: give at least n, n and 64 n",
                self.lengths.len(),
                self.addrs.len(),
                self.headers.len()
            )));
        }
        Ok(())
    }
}

/// The lease state (see the [module docs](self)).
struct Lease {
    descs: Vec<XdpDesc>,
    /// Which lease this is (the n-th batch lent); a caller names the one it was given.
    seq: u64,
    open: bool,
    /// Whether a reshape changed `descs` (the context gets them back).
    reshaped: bool,
    /// The batch socket's cache of free frames while lent (a placeholder of the same pool
    /// otherwise).
    cache: PoolCache,
    /// Frames emitted through the lease, and emits that found no free frame.
    emits: Vec<Emitted>,
    emit_failed: u64,
    /// The context's [`EmitRules`], owned, and how many it had emitted before the lease.
    sockets: Vec<usize>,
    local: usize,
    limit: usize,
    emitted_before: usize,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("seq", &self.seq)
            .field("open", &self.open)
            .field("frames", &self.descs.len())
            .field("emits", &self.emits.len())
            .finish_non_exhaustive()
    }
}

/// One worker's lease on the frames of the batch its handler is running (see the
/// [module docs](self)). Holds the UMEM weakly: a batch object that outlives its port does not
/// keep the port's sockets bound.
#[derive(Debug)]
pub struct BatchFrames {
    umem: Weak<Umem>,
    lease: Mutex<Lease>,
}

impl BatchFrames {
    /// A lease for batches of up to `cap` frames of `umem`.
    pub fn new(umem: &Arc<Umem>, cap: usize) -> Result<Self> {
        Ok(BatchFrames {
            umem: Arc::downgrade(umem),
            lease: Mutex::new(Lease {
                descs: Vec::with_capacity(cap),
                seq: 0,
                open: false,
                reshaped: false,
                cache: umem.pool().cache(0)?,
                emits: Vec::with_capacity(emit_limit(cap)),
                emit_failed: 0,
                sockets: Vec::new(),
                local: 0,
                limit: 0,
                emitted_before: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lease> {
        // Every holder leaves the lease consistent (a panic inside an edit closure at worst
        // leaves it open, and `Lent` closes it when dropped).
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lend the frames of `ctx`'s batch until the returned [`Lent`] ends (or is dropped).
    ///
    /// # Panics
    /// If `ctx`'s batch is not in the UMEM this lease was made for (its edits would reach
    /// another UMEM's frames, and its emits mix two pools).
    pub fn lend<'f, 'c, 'a>(&'f self, ctx: &'c mut BatchCtx<'a>) -> Lent<'f, 'c, 'a> {
        assert!(
            std::ptr::eq(self.umem.as_ptr(), ctx.umem),
            "a BatchFrames lends batches of the UMEM it was made for"
        );
        let seq = {
            let mut g = self.lock();
            let l = &mut *g;
            l.descs.clear();
            l.descs.extend_from_slice(ctx.descs());
            l.seq = l.seq.wrapping_add(1);
            l.open = true;
            l.reshaped = false;
            l.emit_failed = 0;
            let rules = ctx.emit_rules();
            l.sockets.clear();
            l.sockets.extend_from_slice(rules.sockets);
            (l.local, l.limit) = (rules.local, rules.limit);
            l.emitted_before = ctx.emitted();
            ctx.swap_cache(&mut l.cache);
            l.seq
        };
        Lent {
            frames: self,
            ctx: Some(ctx),
            seq,
        }
    }

    /// The lease `seq`, open; an error once it ended.
    fn open(&self, seq: u64) -> Result<MutexGuard<'_, Lease>> {
        let l = self.lock();
        if !l.open || l.seq != seq {
            return Err(Error::State(
                "this batch ended when its handler returned: its frames went on (copy what you need inside the handler, or give frames the KEEP verdict)".into(),
            ));
        }
        Ok(l)
    }

    fn umem(&self) -> Result<Arc<Umem>> {
        self.umem
            .upgrade()
            .ok_or_else(|| Error::State("the port was closed: its frames are gone".into()))
    }

    /// Descriptor `i` of lease `seq` (an error if the lease ended or `i` is out of range).
    pub fn desc(&self, seq: u64, i: usize) -> Result<XdpDesc> {
        let l = self.open(seq)?;
        l.descs.get(i).copied().ok_or_else(|| {
            Error::invalid(format!(
                "frame {i} out of range for a batch of {}",
                l.descs.len()
            ))
        })
    }

    /// Apply `f` to each frame of lease `seq` where `mask` is true (every frame without a
    /// mask), with its parsed headers; returns how many times `f` returned true. `mask` must
    /// have one entry per frame.
    pub fn edit(
        &self,
        seq: u64,
        mask: Option<&[bool]>,
        mut f: impl FnMut(&mut [u8], &PacketMeta) -> bool,
    ) -> Result<usize> {
        self.each(seq, Pick::from(mask), |frame| {
            let m = parse(frame);
            f(frame, &m)
        })
    }

    /// Read each frame of lease `seq` where `mask` is true (every frame without a mask);
    /// returns how many times `f` returned true.
    pub fn read(
        &self,
        seq: u64,
        mask: Option<&[bool]>,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<usize> {
        self.each(seq, Pick::from(mask), |frame| f(frame))
    }

    /// Apply `f` to frame `i` of lease `seq` with its parsed headers; false when the frame is
    /// not there to edit.
    pub fn edit_one(
        &self,
        seq: u64,
        i: usize,
        f: impl FnOnce(&mut [u8], &PacketMeta) -> bool,
    ) -> Result<bool> {
        let mut f = Some(f);
        let n = self.each(seq, Pick::One(i), |frame| {
            let m = parse(frame);
            f.take().is_some_and(|f| f(frame, &m))
        })?;
        Ok(n > 0)
    }

    /// `f` of frame `i`'s bytes in lease `seq` (None when the frame is not there to read).
    pub fn read_one<T>(&self, seq: u64, i: usize, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.each(seq, Pick::One(i), |frame| {
            out = f.take().map(|f| f(frame));
            true
        })?;
        Ok(out)
    }

    /// `f` on each picked frame of lease `seq`, under one lock; counts `f`'s trues.
    pub(super) fn each(
        &self,
        seq: u64,
        pick: Pick<'_>,
        mut f: impl FnMut(&mut [u8]) -> bool,
    ) -> Result<usize> {
        let umem = self.umem()?;
        let l = self.open(seq)?;
        if let Pick::Mask(_) = pick {
            check_pick(pick, l.descs.len())?;
        }
        let mut k = 0;
        for (i, d) in l.descs.iter().enumerate() {
            if !pick.picks(i) {
                continue;
            }
            // SAFETY: the lease is open and we hold its mutex for the whole loop, so the worker
            // is inside the handler call that lent these frames, with its `BatchCtx` (the only
            // other way to them in Rust) mutably borrowed by the `Lent` until the lease ends,
            // and ending it waits for this mutex. One slice lives at a time. The frame state
            // (App, checked) keeps the kernel and the rings off it. Views outside Rust are the
            // lender's to keep still meanwhile (see `frame_bytes_mut`).
            if let Some(frame) = unsafe { super::frame_bytes_mut(&umem, d.addr, d.len) } {
                if f(frame) {
                    k += 1;
                }
            }
        }
        Ok(k)
    }

    /// Set the packet length of each picked frame of lease `seq` (see
    /// [`BatchCtx::set_len`]); returns how many changed. All or nothing: if one picked frame
    /// cannot take its length, the error names it and no frame changes. With `cols`, the
    /// changed frames' lengths, addresses and parsed headers are rewritten there.
    pub fn set_len(
        &self,
        seq: u64,
        pick: Pick<'_>,
        len: NewLen<'_>,
        cols: Option<Columns<'_>>,
    ) -> Result<usize> {
        if let NewLen::PerFrame(v) = len {
            let n = self.open(seq)?.descs.len();
            if v.len() != n {
                return Err(Error::invalid(format!(
                    "{} lengths for a batch of {n}: pass one length per frame",
                    v.len()
                )));
            }
        }
        let op = |i: usize, _: &[u8]| {
            Some(Reshape::Len(match len {
                NewLen::Each(l) => l,
                NewLen::PerFrame(v) => v[i],
            }))
        };
        self.reshape(seq, pick, cols, op, |_| {})
    }

    /// Move the first byte of each picked frame of lease `seq` by `delta` (see
    /// [`BatchCtx::adjust_head`]; negative pushes zeroed bytes in front, positive pops);
    /// returns how many changed. All or nothing, and `cols`, as [`BatchFrames::set_len`].
    pub fn adjust_head(
        &self,
        seq: u64,
        pick: Pick<'_>,
        delta: i32,
        cols: Option<Columns<'_>>,
    ) -> Result<usize> {
        self.reshape(seq, pick, cols, |_, _| Some(Reshape::Head(delta)), |_| {})
    }

    /// Push a VLAN tag (`tpid` 0x8100 or 0x88a8, `tci`: priority, DEI and VLAN id) in front of
    /// each picked frame of lease `seq`, after its MAC addresses; returns how many. All or
    /// nothing (the room in front, see [`BatchFrames::adjust_head`]), and `cols`, as
    /// [`BatchFrames::set_len`].
    pub fn push_vlan(
        &self,
        seq: u64,
        pick: Pick<'_>,
        tpid: u16,
        tci: u16,
        cols: Option<Columns<'_>>,
    ) -> Result<usize> {
        if !matches!(tpid, ETH_P_8021Q | ETH_P_8021AD) {
            return Err(Error::invalid(format!(
                "tpid {tpid:#06x} is not a VLAN tag protocol: use 0x8100 (802.1Q) or 0x88a8 (802.1ad)"
            )));
        }
        self.reshape(
            seq,
            pick,
            cols,
            |_, _| Some(Reshape::Head(-4)),
            |span| {
                edit::write_vlan_tag(span, tpid, tci);
            },
        )
    }

    /// Pop the outer VLAN tag of each picked frame of lease `seq` that has one; returns how
    /// many had one. `cols` as [`BatchFrames::set_len`].
    pub fn pop_vlan(&self, seq: u64, pick: Pick<'_>, cols: Option<Columns<'_>>) -> Result<usize> {
        self.reshape(
            seq,
            pick,
            cols,
            |_, f| edit::has_vlan_tag(f).then_some(Reshape::Head(4)),
            |span| {
                edit::unwrap_vlan_tag(span);
            },
        )
    }

    /// Reshape the picked frames: `op(i, packet)` says how (None: leave frame `i` alone),
    /// then `edit` gets the bytes the old and new packet cover together (new bytes zeroed).
    /// Every frame is checked before any changes.
    fn reshape(
        &self,
        seq: u64,
        pick: Pick<'_>,
        cols: Option<Columns<'_>>,
        op: impl Fn(usize, &[u8]) -> Option<Reshape>,
        edit: impl Fn(&mut [u8]),
    ) -> Result<usize> {
        let umem = self.umem()?;
        let mut g = self.open(seq)?;
        let l = &mut *g;
        check_pick(pick, l.descs.len())?;
        if let Some(c) = &cols {
            c.check(l.descs.len())?;
        }
        // `op` of frame i, given its packet bytes (read under the lease, see below).
        let plan = |descs: &[XdpDesc], i: usize| -> Option<Reshape> {
            let d = descs[i];
            // SAFETY: as in `each`: the lease is open and we hold its mutex, so the worker is
            // inside the handler call that lent this frame, its `BatchCtx` borrowed by the
            // `Lent`; the frame state (App, checked) keeps the kernel and the rings off it; no
            // Rust writer runs while this read lives; views outside Rust are the lender's.
            let bytes = unsafe { super::frame_bytes(&umem, d.addr, d.len) }?;
            op(i, bytes)
        };
        // Check every picked frame first: nothing changes unless all of them can.
        for i in (0..l.descs.len()).filter(|&i| pick.picks(i)) {
            if let Some(r) = plan(&l.descs, i) {
                build::check(&umem, &l.descs, i, r)?;
            }
        }
        let mut k = 0;
        for i in (0..l.descs.len()).filter(|&i| pick.picks(i)) {
            let Some(r) = plan(&l.descs, i) else {
                continue;
            };
            let new = build::check(&umem, &l.descs, i, r)?;
            let old = l.descs[i];
            // SAFETY: as below; read before the reshape writes over the bytes in front.
            let req = unsafe { txreq::request_of(&umem, &old) };
            let (lo, len) = build::span(&old, &new);
            // SAFETY: as in `each`: the lease is open and we hold its mutex, so the worker is
            // inside the handler call that lent this frame, its `BatchCtx` borrowed by the
            // `Lent`; the frame state (App, checked) keeps the kernel and the rings off it; one
            // slice lives at a time; views outside Rust are the lender's to keep still.
            let bytes = unsafe { super::frame_bytes_mut(&umem, lo, len) }
                .ok_or_else(|| Error::State(format!("frame {i} is not there to reshape")))?;
            build::zero_added(bytes, &old, &new);
            edit(bytes);
            l.descs[i] = new;
            if old.options & XDP_TX_METADATA != 0 {
                // The TX metadata request moves with the packet.
                let req = txreq::moved_request(req, &old, &new);
                // SAFETY: as above; `bytes` is no longer used.
                unsafe { txreq::set_request(&umem, &mut l.descs[i], req) };
            }
            l.reshaped = true;
            k += 1;
        }
        if let Some(c) = cols {
            write_columns(&umem, &l.descs, pick, c);
        }
        Ok(k)
    }

    /// Answer each picked frame of lease `seq` in place with `reply` ([`crate::packet::reply`]):
    /// the reply may grow into the rest of its frame, and the descriptor the verdict sends takes
    /// the reply's length. A frame the reply does not answer (another protocol, cut short, a
    /// buffer of a multi-buffer packet, ...) is left exactly as it was. `answered` (one entry
    /// per frame) says which were answered, and their columns are rewritten. Returns how many.
    /// Each answer is then made as `ask` says ([`BatchFrames::prepare_tx`]: its UDP/TCP
    /// checksum left to the kernel or device, a TX timestamp); an earlier request of the frame
    /// is dropped.
    pub fn reply(
        &self,
        seq: u64,
        pick: Pick<'_>,
        reply: &Reply<'_>,
        ask: &TxAsk,
        answered: &mut [bool],
        cols: Option<Columns<'_>>,
    ) -> Result<usize> {
        reply.check().map_err(|e| Error::invalid(e.to_string()))?;
        let umem = self.umem()?;
        ask.check(&umem)?;
        let mut g = self.open(seq)?;
        let l = &mut *g;
        check_pick(pick, l.descs.len())?;
        if answered.len() != l.descs.len() {
            return Err(Error::invalid(format!(
                "answered has {} entries for a batch of {}",
                answered.len(),
                l.descs.len()
            )));
        }
        if let Some(c) = &cols {
            c.check(l.descs.len())?;
        }
        let mut k = 0;
        for (i, done) in answered.iter_mut().enumerate() {
            *done = false;
            let d = l.descs[i];
            // Not picked, or a buffer of a multi-buffer packet (its length is the packet's).
            if !pick.picks(i) || build::check(&umem, &l.descs, i, Reshape::Len(d.len)).is_err() {
                continue;
            }
            let Some((_, back)) = umem.room(&d) else {
                continue;
            };
            // SAFETY: as in `each`: the lease is open and we hold its mutex, so the worker is
            // inside the handler call that lent this frame, its `BatchCtx` borrowed by the
            // `Lent`; the frame state (App, checked) keeps the kernel and the rings off it; the
            // span is the packet and the rest of its frame (`room`); one slice lives at a time;
            // views outside Rust are the lender's to keep still.
            let Some(bytes) = (unsafe { super::frame_bytes_mut(&umem, d.addr, d.len + back) })
            else {
                continue;
            };
            // A refused frame is untouched: every check is made before the first write.
            let Ok(n) = reply.apply(bytes, d.len as usize) else {
                continue;
            };
            // The reply fits the span (apply never writes past it), so its length is valid.
            l.descs[i] = build::check(&umem, &l.descs, i, Reshape::Len(n as u32))?;
            // SAFETY: as above; `bytes` is no longer used.
            unsafe { txreq::apply(&umem, &mut l.descs[i], ask) };
            l.reshaped = true;
            *done = true;
            k += 1;
        }
        if let Some(c) = cols {
            write_columns(&umem, &l.descs, Pick::Mask(answered), c);
        }
        Ok(k)
    }

    /// Rewrite the columns of each picked frame of lease `seq` from the frame as it is now: its
    /// length, address and parsed headers (e.g. after writing a new header into pushed bytes).
    /// Returns how many frames it parsed.
    pub fn reparse(&self, seq: u64, pick: Pick<'_>, cols: Columns<'_>) -> Result<usize> {
        let umem = self.umem()?;
        let l = self.open(seq)?;
        check_pick(pick, l.descs.len())?;
        cols.check(l.descs.len())?;
        Ok(write_columns(&umem, &l.descs, pick, cols))
    }

    /// Close the lease and give `ctx` what the handler built: the reshaped descriptors, the
    /// emitted frames, the socket's cache.
    fn settle(&self, ctx: &mut BatchCtx<'_>) {
        let mut g = self.lock();
        let l = &mut *g;
        l.open = false;
        ctx.swap_cache(&mut l.cache);
        if l.reshaped {
            ctx.descs.copy_from_slice(&l.descs);
        }
        ctx.emits.append(&mut l.emits);
        ctx.emit_failed += l.emit_failed;
    }
}

/// Write the columns of the picked frames of `descs` (a lease's, its mutex held by the caller);
/// returns how many.
fn write_columns(umem: &Umem, descs: &[XdpDesc], pick: Pick<'_>, c: Columns<'_>) -> usize {
    let mut k = 0;
    for (i, d) in descs.iter().enumerate().filter(|(i, _)| pick.picks(*i)) {
        // SAFETY: the caller holds the open lease's mutex: the worker is inside the handler
        // call that lent these frames (App, checked: no kernel, ring or hold has them), its
        // `BatchCtx` borrowed by the `Lent`, and no Rust writer runs meanwhile; views outside
        // Rust are the lender's to keep still.
        let m = unsafe { super::frame_bytes(umem, d.addr, d.len) }
            .map(parse)
            .unwrap_or_default();
        c.lengths[i] = d.len;
        c.addrs[i] = d.addr;
        c.headers[i * 64..i * 64 + 64].copy_from_slice(&m.to_bytes());
        k += 1;
    }
    k
}

/// An error if `pick`'s mask does not have one entry per frame of a batch of `n`.
fn check_pick(pick: Pick<'_>, n: usize) -> Result<()> {
    match pick {
        Pick::Mask(m) if m.len() != n => Err(Error::invalid(format!(
            "mask has {} entries for a batch of {n}: pass a boolean array of len(batch)",
            m.len()
        ))),
        Pick::One(i) if i >= n => Err(Error::invalid(format!(
            "frame {i} out of range for a batch of {n}"
        ))),
        _ => Ok(()),
    }
}

/// What a per-packet handler answered for one packet (see [`Lent::for_each_packet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketVerdict {
    /// Nothing: the packet keeps the pipeline's default verdict.
    Default,
    /// This verdict (a valid one: see [`super::valid_verdict`]).
    Set(u8),
    /// The handler failed on this packet.
    Failed,
}

/// A lease on a batch's frames (see [`BatchFrames::lend`]). While it lives the handler reaches
/// the batch's columns and verdicts through it, not its frames; [`Lent::end`] closes the lease
/// and gives the [`BatchCtx`] back.
pub struct Lent<'f, 'c, 'a> {
    frames: &'f BatchFrames,
    /// Always Some until `end` takes it.
    ctx: Option<&'c mut BatchCtx<'a>>,
    seq: u64,
}

impl<'c, 'a> Lent<'_, 'c, 'a> {
    fn ctx(&self) -> &BatchCtx<'a> {
        self.ctx.as_deref().expect("a live Lent has its BatchCtx")
    }

    fn ctx_mut(&mut self) -> &mut BatchCtx<'a> {
        self.ctx
            .as_deref_mut()
            .expect("a live Lent has its BatchCtx")
    }

    /// The lease's number: what edits and reads through [`BatchFrames`] name.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.ctx().len()
    }

    /// Whether the batch is empty (never, for a batch a worker hands out).
    pub fn is_empty(&self) -> bool {
        self.ctx().is_empty()
    }

    /// Pipeline-wide index of the socket the frames arrived on.
    pub fn socket(&self) -> usize {
        self.ctx().socket
    }

    /// Index of the worker.
    pub fn worker(&self) -> usize {
        self.ctx().worker
    }

    /// Parsed headers, one per frame.
    pub fn metas(&self) -> &[PacketMeta] {
        self.ctx().metas
    }

    /// The descriptors as lent (reshapes through the lease show in [`BatchFrames::desc`], and
    /// reach the context when the lease ends).
    pub fn descs(&self) -> &[XdpDesc] {
        self.ctx().descs()
    }

    /// Verdicts (pre-filled with the default).
    pub fn verdicts(&mut self) -> &mut [u8] {
        self.ctx_mut().verdicts
    }

    /// FORWARD targets.
    pub fn forward_to(&mut self) -> &mut [u16] {
        self.ctx_mut().forward_to
    }

    /// See [`BatchCtx::write_columns`].
    pub fn write_columns(&self, lengths: &mut [u32], addrs: &mut [u64], headers: &mut [u8]) {
        self.ctx().write_columns(lengths, addrs, headers)
    }

    /// See [`BatchCtx::fail_packet`].
    pub fn fail_packet(&mut self, i: usize) {
        self.ctx_mut().fail_packet(i)
    }

    /// Call `f` once per packet, in order, with its index and parsed headers (a per-packet
    /// handler), and apply what it answers: [`PacketVerdict::Default`] keeps the pre-filled
    /// verdict, [`PacketVerdict::Set`] sets one, [`PacketVerdict::Failed`] applies the error
    /// policy ([`BatchCtx::fail_packet`]).
    pub fn for_each_packet(&mut self, mut f: impl FnMut(usize, &PacketMeta) -> PacketVerdict) {
        let ctx = self.ctx_mut();
        for i in 0..ctx.len() {
            match f(i, &ctx.metas[i]) {
                PacketVerdict::Default => {}
                PacketVerdict::Set(v) => ctx.verdicts[i] = v,
                PacketVerdict::Failed => ctx.fail_packet(i),
            }
        }
    }

    /// Stop the pipeline after this batch.
    pub fn stop(&mut self) {
        self.ctx_mut().stop = true;
    }

    /// Close the lease (after an edit or read in flight) and give the context back, with
    /// what the handler built through the lease (reshaped descriptors, emitted frames).
    pub fn end(mut self) -> &'c mut BatchCtx<'a> {
        let ctx = self.ctx.take().expect("a live Lent has its BatchCtx");
        self.frames.settle(ctx);
        ctx
    }
}

impl Drop for Lent<'_, '_, '_> {
    fn drop(&mut self) {
        // Not ended (an early return, a panic): settle now. `end` settled already.
        if let Some(ctx) = self.ctx.take() {
            self.frames.settle(ctx);
        }
    }
}
