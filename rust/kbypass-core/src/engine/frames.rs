//! A batch's frames lent, for the length of a handler call, to code that cannot borrow the
//! [`BatchCtx`]: a binding's batch object, called back from inside the handler (possibly from
//! another thread the handler waits for).
//!
//! [`BatchFrames::lend`] copies the batch's descriptors and takes the `BatchCtx` by `&mut` for
//! as long as the returned [`Lent`] lives, so nothing reaches the frames through the context
//! meanwhile; edits and reads go through the lease, one call at a time (its mutex), by
//! descriptor index and mask. Ending the lease waits for a call in flight and closes it: a
//! batch object kept past its handler gets an error, never a frame that moved on.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::worker::BatchCtx;
use crate::error::{Error, Result};
use crate::packet::{parse, PacketMeta};
use crate::sys::xdp::XdpDesc;
use crate::xsk::Umem;

/// Which frames of a lease a call reaches.
#[derive(Clone, Copy)]
enum Pick<'m> {
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

/// The lease state (see the [module docs](self)).
#[derive(Debug)]
struct Lease {
    descs: Vec<XdpDesc>,
    /// Which lease this is (the n-th batch lent); a caller names the one it was given.
    seq: u64,
    open: bool,
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
    pub fn new(umem: &Arc<Umem>, cap: usize) -> Self {
        BatchFrames {
            umem: Arc::downgrade(umem),
            lease: Mutex::new(Lease {
                descs: Vec::with_capacity(cap),
                seq: 0,
                open: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lease> {
        // Every holder leaves the lease consistent (a panic inside an edit closure at worst
        // leaves it open, and `Lent` closes it when dropped).
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lend the frames of `ctx`'s batch until the returned [`Lent`] ends (or is dropped).
    pub fn lend<'f, 'c, 'a>(&'f self, ctx: &'c mut BatchCtx<'a>) -> Lent<'f, 'c, 'a> {
        let seq = {
            let mut l = self.lock();
            l.descs.clear();
            l.descs.extend_from_slice(ctx.descs());
            l.seq = l.seq.wrapping_add(1);
            l.open = true;
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
    fn each(
        &self,
        seq: u64,
        pick: Pick<'_>,
        mut f: impl FnMut(&mut [u8]) -> bool,
    ) -> Result<usize> {
        let umem = self.umem()?;
        let l = self.open(seq)?;
        if let Pick::Mask(m) = pick {
            if m.len() != l.descs.len() {
                return Err(Error::invalid(format!(
                    "mask has {} entries for a batch of {}: pass a boolean array of len(batch)",
                    m.len(),
                    l.descs.len()
                )));
            }
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

    fn close(&self) {
        self.lock().open = false;
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

    /// The descriptors.
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

    /// Close the lease (after an edit or read in flight) and give the context back.
    pub fn end(mut self) -> &'c mut BatchCtx<'a> {
        self.frames.close();
        self.ctx.take().expect("a live Lent has its BatchCtx")
    }
}

impl Drop for Lent<'_, '_, '_> {
    fn drop(&mut self) {
        // Not ended (an early return, a panic): close the lease now. `end` closed it already.
        if self.ctx.is_some() {
            self.frames.close();
        }
    }
}
