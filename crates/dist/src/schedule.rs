//! Who reads which extent in which round, and what each rank gives each
//! other rank.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use weightlift_format::{Checkpoint, TensorId};
use weightlift_plan::ReadPlan;

use crate::{Block, Error, part};

/// What one rank wants of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Want {
    /// All of it.
    Whole,
    /// The rank's part of `torch.tensor_split(tensor, n, dim)`, with `n` the
    /// group's size and the rank as the part's index (see [`part`]).
    Split {
        /// The dimension to split along.
        dim: usize,
    },
}

/// One tensor a rank asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// The tensor.
    pub tensor: TensorId,
    /// How much of it.
    pub want: Want,
}

impl Request {
    /// All of `tensor`.
    pub fn whole(tensor: TensorId) -> Self {
        Self {
            tensor,
            want: Want::Whole,
        }
    }

    /// The rank's part of `tensor` split along `dim`.
    pub fn split(tensor: TensorId, dim: usize) -> Self {
        Self {
            tensor,
            want: Want::Split { dim },
        }
    }
}

/// What a rank receives for one of its requests: a contiguous, row-major
/// tensor of `shape` and `len` bytes, of the tensor's dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The tensor it comes from.
    pub tensor: TensorId,
    /// What of it was asked for.
    pub want: Want,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its length in bytes.
    pub len: u64,
}

/// How to schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The most bytes one rank reads in one round: the size of its round
    /// buffer. At least the plan's largest extent, which is read whole.
    pub round_bytes: u64,
}

impl Options {
    /// Default round budget: 16 extents of the planner's default size, so a
    /// round keeps many reads in flight. What a rank sends in a round can
    /// be its reads once per rank that wants them, so a caller that wants
    /// a round's exchange bounded divides its budget by the group's size.
    pub const DEFAULT_ROUND_BYTES: u64 = 256 << 20;
}

impl Default for Options {
    fn default() -> Self {
        Self {
            round_bytes: Self::DEFAULT_ROUND_BYTES,
        }
    }
}

/// `count` runs of `run` bytes: run `i` goes from the source rank's round
/// buffer at `src_at + i * src_stride` to the destination rank's output
/// number `output` (an index into its [`Schedule::outputs`]) at
/// `dst_at + i * run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Move {
    /// Offset of the first run in the source's round buffer.
    pub src_at: u64,
    /// Bytes in each run.
    pub run: u64,
    /// Number of runs.
    pub count: u64,
    /// Distance between the starts of runs in the source's buffer (equal to
    /// `run` when `count` is 1).
    pub src_stride: u64,
    /// Which of the destination's outputs the bytes belong to.
    pub output: usize,
    /// Offset of the first run in that output; the runs land back to back.
    pub dst_at: u64,
}

impl Move {
    /// Bytes moved (`run * count`).
    pub fn len(&self) -> u64 {
        self.run * self.count
    }

    /// Whether nothing is moved (never so in a schedule).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One round: each rank reads some extents into its round buffer, then the
/// group exchanges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Round {
    /// Per rank: indices into the plan's extents that it reads this round,
    /// in plan order. Its round buffer holds them whole, packed in that
    /// order (each extent's bytes from its aligned file offset).
    pub reads: Vec<Vec<usize>>,
    /// `moves[src][dst]`: what rank `src` gives rank `dst` this round, in
    /// order. Concatenated, the runs are the bytes `src` sends `dst`; for
    /// `src == dst` they are copies within the rank.
    pub moves: Vec<Vec<Vec<Move>>>,
}

impl Round {
    /// Bytes rank `src` gives rank `dst` this round.
    ///
    /// Panics if either is not a rank of the group.
    pub fn bytes(&self, src: usize, dst: usize) -> u64 {
        self.moves[src][dst].iter().map(Move::len).sum()
    }
}

/// The whole of a group's load: every rank computes the same schedule from
/// the same inputs, so it is never sent. See the crate docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    outputs: Vec<Vec<Output>>,
    rounds: Vec<Round>,
    read: Vec<u64>,
    sent: Vec<u64>,
    received: Vec<u64>,
    local: Vec<u64>,
    bound: u64,
    largest_buffer: u64,
}

impl Schedule {
    /// The number of ranks.
    pub fn group_size(&self) -> usize {
        self.outputs.len()
    }

    /// Per rank, what it receives: one output per request, in request order.
    pub fn outputs(&self) -> &[Vec<Output>] {
        &self.outputs
    }

    /// The rounds, in the order they run.
    pub fn rounds(&self) -> &[Round] {
        &self.rounds
    }

    /// Per rank, bytes it reads from storage.
    pub fn read_bytes(&self) -> &[u64] {
        &self.read
    }

    /// Per rank, bytes it sends to other ranks.
    pub fn sent_bytes(&self) -> &[u64] {
        &self.sent
    }

    /// Per rank, bytes it receives from other ranks.
    pub fn received_bytes(&self) -> &[u64] {
        &self.received
    }

    /// Per rank, bytes it copies from its own round buffers to its outputs.
    pub fn local_bytes(&self) -> &[u64] {
        &self.local
    }

    /// The most any rank may read: `ceil(T / n) + E`, with `T` the plan's
    /// bytes read, `E` its largest extent and `n` the group's size
    /// (saturating). Every entry of [`read_bytes`](Self::read_bytes) is at
    /// most this.
    pub fn read_bound(&self) -> u64 {
        self.bound
    }

    /// The largest round buffer any rank fills: at most the round budget.
    pub fn largest_buffer(&self) -> u64 {
        self.largest_buffer
    }
}

/// One rank's interest in one tensor.
struct Wanter {
    tensor: TensorId,
    rank: usize,
    output: usize,
    block: Block,
}

/// Schedule the load of `plan` by a group of `wants.len()` ranks, rank `r`
/// asking for `wants[r]`.
///
/// `plan` reads (at least) every tensor any rank asks for, and every rank
/// passes the same plan, the same `wants` and the same options: the
/// schedule is a pure, deterministic function of them.
///
/// **Reads.** Each extent is read whole by exactly one rank. Extents are
/// taken in plan order; each goes to the rank that wants the most of its
/// bytes (on a tie, the one that has read least so far, then the lowest)
/// when that keeps the rank's reads within the bound below, and otherwise to
/// the rank that has read least so far (the lowest on a tie). So a part
/// that fills whole extents (a split along the first dimension, say) is
/// read by the rank that keeps it and sent nowhere, and an extent every rank
/// wants alike (a tensor everyone takes whole) goes to the least loaded.
/// Extents nobody asked for (the plan may read more) are read all the same.
///
/// **Bound.** With `T` the plan's bytes read, `E` its largest extent and `n`
/// the group's size, every rank reads at most `ceil(T / n) + E` bytes: the
/// least-loaded rank has read at most the mean of what was assigned before
/// an extent, at most `(T − len) / n`, so taking the extent keeps it within
/// `T / n + E`.
///
/// **Rounds.** Each rank's extents, in plan order, are cut greedily into
/// rounds of at most `options.round_bytes` bytes; there are as many rounds as
/// the busiest rank needs, and the others have empty rounds at the end.
///
/// **Moves.** For every piece of every extent and every rank that wants
/// bytes of its tensor, the wanted bytes go from the reader's round buffer
/// to the wanter's output in at most three moves (a cut first run, the whole
/// runs between, a cut last run), so the schedule has at most three moves
/// per piece and wanting rank whatever the number of rows. A run that spans
/// two extents becomes two moves, possibly from two ranks; consecutive
/// single runs that continue each other in the same buffer are merged.
///
/// Fails when `wants` is empty, a request names a tensor the checkpoint or
/// the plan lacks, a rank names a tensor twice, a rank's part cannot be cut
/// (see [`part`]), the plan reads only part of a requested tensor or does
/// not fit the checkpoint, or `options.round_bytes` is smaller than the
/// plan's largest extent.
pub fn schedule(
    ckpt: &Checkpoint,
    plan: &ReadPlan,
    wants: &[Vec<Request>],
    options: &Options,
) -> Result<Schedule, Error> {
    let n = wants.len();
    if n == 0 {
        return Err(Error::NoRanks);
    }
    let parts = u32::try_from(n).map_err(|_| Error::TooManyRanks { ranks: n })?;
    let extents = plan.extents();
    let largest = extents.iter().map(|e| e.len).max().unwrap_or(0);
    if options.round_bytes < largest {
        return Err(Error::RoundTooSmall {
            round_bytes: options.round_bytes,
            largest_extent: largest,
        });
    }
    check_plan(ckpt, plan)?;
    let Requests {
        outputs,
        wanters,
        groups,
    } = requests(ckpt, plan, wants, parts)?;
    let group_of = |t: TensorId| -> &[Wanter] {
        match groups.binary_search_by_key(&t, |g| g.0) {
            Ok(g) => &wanters[groups[g].1..groups[g].2],
            Err(_) => &[],
        }
    };

    // Reads: who reads each extent.
    let total: u128 = extents.iter().map(|e| u128::from(e.len)).sum();
    let bound128 = total.div_ceil(n as u128) + u128::from(largest);
    let bound = u64::try_from(bound128).unwrap_or(u64::MAX);
    let mut load = vec![0u64; n];
    let mut by_load: BTreeSet<(u64, usize)> = (0..n).map(|r| (0, r)).collect();
    let mut wanted = vec![0u64; n];
    let mut touched: Vec<usize> = Vec::new();
    let mut owners = Vec::with_capacity(extents.len());
    for (e, pieces) in plan.iter() {
        for p in pieces {
            for w in group_of(p.tensor) {
                let b = w.block.overlap(p.tensor_offset, p.tensor_offset + p.len);
                if b > 0 {
                    if wanted[w.rank] == 0 {
                        touched.push(w.rank);
                    }
                    wanted[w.rank] += b;
                }
            }
        }
        // Most wanted bytes first, then the least loaded, then the lowest.
        let best = touched
            .iter()
            .copied()
            .max_by_key(|&r| (wanted[r], Reverse(load[r]), Reverse(r)));
        let owner = match best {
            Some(r) if u128::from(load[r]) + u128::from(e.len) <= bound128 => r,
            // `by_load` holds every rank.
            _ => by_load.first().map_or(0, |&(_, r)| r),
        };
        for r in touched.drain(..) {
            wanted[r] = 0;
        }
        by_load.remove(&(load[owner], owner));
        load[owner] = load[owner].saturating_add(e.len);
        by_load.insert((load[owner], owner));
        owners.push(owner);
    }

    // Rounds: where each extent lands in its reader's round buffers.
    let mut fill: Vec<Option<(usize, u64)>> = vec![None; n];
    let mut placement = Vec::with_capacity(extents.len());
    let mut largest_buffer = 0;
    for (e, &r) in extents.iter().zip(&owners) {
        // A round also ends where its offsets would overflow.
        let (round, at) = match fill[r] {
            Some((round, used)) => match used.checked_add(e.len) {
                Some(end) if end <= options.round_bytes => (round, used),
                _ => (round + 1, 0),
            },
            None => (0, 0),
        };
        fill[r] = Some((round, at + e.len));
        largest_buffer = largest_buffer.max(at + e.len);
        placement.push((round, at));
    }
    let round_count = fill
        .iter()
        .flatten()
        .map(|&(r, _)| r + 1)
        .max()
        .unwrap_or(0);
    let mut rounds: Vec<Round> = (0..round_count)
        .map(|_| Round {
            reads: vec![Vec::new(); n],
            moves: vec![vec![Vec::new(); n]; n],
        })
        .collect();

    // Moves, in plan order, so each list follows its source's buffer.
    let mut sent = vec![0u64; n];
    let mut received = vec![0u64; n];
    let mut local = vec![0u64; n];
    for (i, ((_, pieces), (&src, &(round, at)))) in
        plan.iter().zip(owners.iter().zip(&placement)).enumerate()
    {
        let round = &mut rounds[round];
        round.reads[src].push(i);
        for p in pieces {
            let base = at + p.extent_offset;
            for w in group_of(p.tensor) {
                for seg in w.block.clip(p.tensor_offset, p.tensor_offset + p.len) {
                    let mv = Move {
                        src_at: base + (seg.at - p.tensor_offset),
                        run: seg.run,
                        count: seg.count,
                        src_stride: if seg.count == 1 {
                            seg.run
                        } else {
                            w.block.stride
                        },
                        output: w.output,
                        dst_at: seg.dst_at,
                    };
                    let len = mv.len();
                    if src == w.rank {
                        local[src] = local[src].saturating_add(len);
                    } else {
                        sent[src] = sent[src].saturating_add(len);
                        received[w.rank] = received[w.rank].saturating_add(len);
                    }
                    push_move(&mut round.moves[src][w.rank], mv);
                }
            }
        }
    }

    Ok(Schedule {
        outputs,
        rounds,
        read: load,
        sent,
        received,
        local,
        bound,
        largest_buffer,
    })
}

/// Append `mv`, merged into the last move when both are single runs that
/// continue each other in the source buffer and in the same output.
fn push_move(moves: &mut Vec<Move>, mv: Move) {
    if let Some(last) = moves.last_mut()
        && last.count == 1
        && mv.count == 1
        && last.output == mv.output
        && last.src_at + last.run == mv.src_at
        && last.dst_at + last.run == mv.dst_at
    {
        last.run += mv.run;
        last.src_stride = last.run;
        return;
    }
    moves.push(mv);
}

/// Every piece must lie inside its extent and its tensor.
fn check_plan(ckpt: &Checkpoint, plan: &ReadPlan) -> Result<(), Error> {
    for (i, (e, pieces)) in plan.iter().enumerate() {
        for p in pieces {
            let fits = p.tensor.index() < ckpt.len()
                && p.tensor_offset
                    .checked_add(p.len)
                    .is_some_and(|end| end <= ckpt.tensor(p.tensor).len())
                && p.extent_offset
                    .checked_add(p.len)
                    .is_some_and(|end| end <= e.len);
            if !fits {
                return Err(Error::PlanMismatch {
                    extent: i,
                    tensor: p.tensor,
                });
            }
        }
    }
    Ok(())
}

/// The requests of a group, checked and indexed.
struct Requests {
    /// What each rank receives.
    outputs: Vec<Vec<Output>>,
    /// Every rank's interest in each tensor, sorted by tensor and rank.
    wanters: Vec<Wanter>,
    /// Each wanted tensor, with its range of `wanters`.
    groups: Vec<(TensorId, usize, usize)>,
}

/// Check the requests against the checkpoint and the plan, and index them.
fn requests(
    ckpt: &Checkpoint,
    plan: &ReadPlan,
    wants: &[Vec<Request>],
    parts: u32,
) -> Result<Requests, Error> {
    let mut planned: Vec<TensorId> = plan.tensors().to_vec();
    planned.sort_unstable();
    let mut outputs = Vec::with_capacity(wants.len());
    let mut wanters = Vec::new();
    for (rank, requests) in wants.iter().enumerate() {
        let mut mine = Vec::with_capacity(requests.len());
        for (output, req) in requests.iter().enumerate() {
            if req.tensor.index() >= ckpt.len() {
                return Err(Error::UnknownId {
                    rank,
                    id: req.tensor,
                    count: ckpt.len(),
                });
            }
            let t = ckpt.tensor(req.tensor);
            if planned.binary_search(&req.tensor).is_err() {
                return Err(Error::NotInPlan {
                    rank,
                    tensor: t.name.clone(),
                });
            }
            let (block, shape) = match req.want {
                Want::Whole => (Block::whole(t.len()), t.shape.clone()),
                // `rank < parts`, which fits in u32.
                Want::Split { dim } => part(&t.shape, t.dtype.bits(), dim, parts, rank as u32)
                    .map_err(|source| Error::Split {
                        rank,
                        tensor: t.name.clone(),
                        shape: t.shape.clone(),
                        source,
                    })?,
            };
            mine.push(Output {
                tensor: req.tensor,
                want: req.want,
                shape,
                len: block.len(),
            });
            wanters.push(Wanter {
                tensor: req.tensor,
                rank,
                output,
                block,
            });
        }
        outputs.push(mine);
    }
    wanters.sort_by_key(|w| (w.tensor, w.rank));
    if let Some(w) = wanters
        .windows(2)
        .find(|w| (w[0].tensor, w[0].rank) == (w[1].tensor, w[1].rank))
    {
        return Err(Error::Duplicate {
            rank: w[0].rank,
            tensor: ckpt.tensor(w[0].tensor).name.clone(),
        });
    }
    let mut groups: Vec<(TensorId, usize, usize)> = Vec::new();
    for (i, w) in wanters.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if g.0 == w.tensor => g.2 = i + 1,
            _ => groups.push((w.tensor, i, i + 1)),
        }
    }
    // The plan must read every byte of each wanted tensor.
    let mut planned_bytes = vec![0u64; groups.len()];
    for p in plan.all_pieces() {
        if let Ok(g) = groups.binary_search_by_key(&p.tensor, |g| g.0) {
            planned_bytes[g] = planned_bytes[g].saturating_add(p.len);
        }
    }
    for (g, &bytes) in groups.iter().zip(&planned_bytes) {
        let t = ckpt.tensor(g.0);
        if bytes != t.len() {
            return Err(Error::Incomplete {
                tensor: t.name.clone(),
                planned: bytes,
                len: t.len(),
            });
        }
    }
    Ok(Requests {
        outputs,
        wanters,
        groups,
    })
}
