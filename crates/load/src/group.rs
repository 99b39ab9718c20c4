//! Loading as one rank of a group: the group reads every byte of the
//! checkpoint once, and each rank receives exactly what it asked for.
//!
//! Every rank makes a [`GroupLoad`] from the same checkpoint and everyone's
//! requests (the caller gathers them), plans their union with
//! [`group_geometry`] and computes the same `weightlift-dist` schedule, so
//! nothing about the schedule is sent. Then, round by round,
//! [`GroupLoad::round`] reads this rank's extents of the round straight
//! into one buffer and packs what it gives each rank (itself included)
//! into one send buffer, in rank order: the input of an all-to-all
//! exchange, which the caller runs (with `torch.distributed`), and whose
//! received bytes [`Exchange::unpack`] says where to put.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use weightlift_dist::{Options as RoundOptions, Output, Request, Schedule};
use weightlift_format::Checkpoint;
use weightlift_io::{Engine, InPlace, Region};
use weightlift_plan::{Geometry, ReadPlan, Selection};

use crate::host::{check_unchanged, name_tensor};
use crate::{Error, LoadOptions};

/// The geometry every rank of a group plans with for rounds of
/// `round_bytes`, whatever backend each chose, so that all plan alike:
/// 4096-byte alignment (a multiple of every common direct-I/O alignment)
/// and reads of at most 16 MiB, or of the round when it is smaller.
pub fn group_geometry(round_bytes: u64) -> Geometry {
    let max_extent = (round_bytes / 4096 * 4096).clamp(4096, 16 << 20);
    Geometry::new(4096, max_extent).expect("a valid geometry")
}

/// A digest of what makes two ranks' checkpoints the same: every shard's
/// file name, size and header (tensor names, dtypes, shapes and offsets).
/// Ranks whose digests differ opened different checkpoints. FNV-1a over
/// the fields' bytes, so builds of any version agree.
pub fn fingerprint(ckpt: &Checkpoint) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for s in ckpt.shards() {
        h.bytes(
            s.path()
                .file_name()
                .map_or(&[][..], |n| n.as_encoded_bytes()),
        );
        h.u64(s.size());
        h.u64(s.data_start());
    }
    for t in ckpt.tensors() {
        h.bytes(t.name.as_bytes());
        h.bytes(t.dtype.as_str().as_bytes());
        h.u64(t.shape.len() as u64);
        t.shape.iter().for_each(|&d| h.u64(d));
        h.u64(t.file.index() as u64);
        h.u64(t.range.start);
        h.u64(t.range.end);
    }
    h.0
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// `b`, with its length first, so that fields cannot run together.
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        b.iter().for_each(|&x| self.byte(x));
    }

    fn u64(&mut self, v: u64) {
        v.to_le_bytes().iter().for_each(|&x| self.byte(x));
    }
}

/// Where bytes received in a round go: `len` bytes from offset `recv_at`
/// of the receive buffer to offset `at` of output `output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpack {
    /// Which of this rank's outputs.
    pub output: usize,
    /// Offset in that output.
    pub at: u64,
    /// Bytes.
    pub len: u64,
    /// Offset in the receive buffer.
    pub recv_at: u64,
}

/// One round of this rank: what it sends, what it receives, and where that
/// goes.
#[derive(Debug)]
pub struct Exchange {
    /// The bytes this rank sends: `send_splits[d]` bytes for rank `d`, in
    /// rank order (its own share included).
    pub send: Arc<Region>,
    /// Bytes for each rank.
    pub send_splits: Vec<u64>,
    /// Bytes from each rank, laid out in rank order in the receive buffer.
    pub recv_splits: Vec<u64>,
    /// Where the received bytes go.
    pub unpack: Vec<Unpack>,
    /// This rank's outputs complete once this round's bytes are in place.
    pub complete: Vec<usize>,
}

/// One rank's part of a group load.
pub struct GroupLoad {
    ckpt: Arc<Checkpoint>,
    plan: ReadPlan,
    schedule: Schedule,
    rank: usize,
    engine: Engine,
    /// Per round, this rank's outputs whose last bytes arrive in it.
    completes: Vec<Vec<usize>>,
}

impl GroupLoad {
    /// Rank `rank`'s part of the load of `wants` (one list per rank, the
    /// same on every rank) from `ckpt`, each rank reading at most
    /// `round_bytes` per round (the same on every rank; at least 4096).
    /// Opens the files and checks them against the checkpoint.
    pub fn new(
        ckpt: Arc<Checkpoint>,
        wants: &[Vec<Request>],
        rank: usize,
        round_bytes: u64,
        options: &LoadOptions,
    ) -> Result<Self, Error> {
        let union: std::collections::BTreeSet<_> =
            wants.iter().flatten().map(|r| r.tensor).collect();
        let plan =
            weightlift_plan::plan(&ckpt, &Selection::Ids(union), &group_geometry(round_bytes))?;
        let schedule = weightlift_dist::schedule(
            &ckpt,
            &plan,
            wants,
            &RoundOptions {
                round_bytes: round_bytes.max(plan.stats().largest_extent),
            },
        )
        .map_err(Error::Group)?;
        if rank >= schedule.group_size() {
            return Err(Error::Setting {
                name: "rank",
                value: rank.to_string(),
                reason: "must be below the number of ranks whose requests were given",
            });
        }
        let paths: Vec<PathBuf> = ckpt
            .shards()
            .iter()
            .map(|s| s.path().to_path_buf())
            .collect();
        // Reads land in a buffer handed on whole: a mapping is never viewed.
        let mut engine_options = options.engine.clone();
        engine_options.map = false;
        let engine = Engine::open(&paths, &engine_options, false)?;
        check_unchanged(&ckpt, engine.files())?;
        let mut left: Vec<u64> = schedule.outputs()[rank].iter().map(|o| o.len).collect();
        let completes = schedule
            .rounds()
            .iter()
            .map(|round| {
                let mut done = Vec::new();
                for from in &round.moves {
                    for m in &from[rank] {
                        left[m.output] -= m.len();
                        if left[m.output] == 0 {
                            done.push(m.output);
                        }
                    }
                }
                done
            })
            .collect();
        Ok(GroupLoad {
            ckpt,
            plan,
            schedule,
            rank,
            engine,
            completes,
        })
    }

    /// The schedule every rank computed.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// What this rank receives, in the order of its requests.
    pub fn outputs(&self) -> &[Output] {
        &self.schedule.outputs()[self.rank]
    }

    /// Number of rounds.
    pub fn rounds(&self) -> usize {
        self.schedule.rounds().len()
    }

    /// The backend reading and its settings, described.
    pub fn describe(&self) -> String {
        self.engine.describe()
    }

    /// Read this rank's extents of round `k` and pack what it sends. A
    /// failed read is an error naming the file and a tensor it held.
    pub fn round(&self, k: usize, cancel: Option<&AtomicBool>) -> Result<Exchange, Error> {
        let round = &self.schedule.rounds()[k];
        let n = self.schedule.group_size();
        let me = self.rank;
        let mine = &round.reads[me];
        let sub = self.plan.only_extents(mine)?;
        let dst = InPlace::contiguous(&sub)?;
        if !mine.is_empty() {
            self.engine
                .run_in_place(&sub, &dst, |_| Ok(()), cancel)
                .map_err(|e| name_tensor(&self.ckpt, &sub, e.into()))?;
        }
        let buf = &dst.regions()[0];
        let send_splits: Vec<u64> = (0..n).map(|d| round.bytes(me, d)).collect();
        let total = usize::try_from(send_splits.iter().sum::<u64>()).map_err(|_| {
            Error::Io(weightlift_io::Error::Plan(
                weightlift_io::PlanMismatch::TooLong { len: u64::MAX },
            ))
        })?;
        let send = Region::anonymous(total).map_err(|source| {
            Error::Io(weightlift_io::Error::Map {
                file: None,
                len: total,
                source,
            })
        })?;
        let mut at = 0usize;
        for m in round.moves[me].iter().flatten() {
            for i in 0..m.count {
                let from = (m.src_at + i * m.src_stride) as usize;
                let run = m.run as usize;
                assert!(
                    from + run <= buf.len() && at + run <= total,
                    "a move outside its buffers"
                );
                // SAFETY: both ranges lie inside their regions (checked
                // above); the reads into `buf` have completed and nothing
                // else uses either region, which are distinct.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        buf.as_ptr().add(from),
                        send.as_ptr().add(at),
                        run,
                    )
                };
                at += run;
            }
        }
        let recv_splits: Vec<u64> = (0..n).map(|s| round.bytes(s, me)).collect();
        let mut unpack = Vec::new();
        let mut recv_at = 0u64;
        for from in &round.moves {
            for m in &from[me] {
                unpack.push(Unpack {
                    output: m.output,
                    at: m.dst_at,
                    len: m.len(),
                    recv_at,
                });
                recv_at += m.len();
            }
        }
        Ok(Exchange {
            send: Arc::new(send),
            send_splits,
            recv_splits,
            unpack,
            complete: self.completes[k].clone(),
        })
    }
}
