"""Loading across a torch.distributed group.

What each rank reads and what it gives every other rank is decided in Rust
(the `weightlift-dist` schedule, through `_weightlift._GroupLoad`); this
module runs it with the group's collectives: it gathers every rank's
requests, agrees on failures before each exchange (so no rank waits for a
collective a failed peer will never join), and moves each round's bytes
with one `all_to_all_single`.
"""

from typing import Any, Iterator, List, Optional, Sequence, Tuple

from . import _errors
from ._errors import SettingError, WeightliftError
from ._frameworks import framework_shape, numpy_dtype, torch_dtype

#: Bytes one rank reads in one round: the size of its round buffer.
ROUND_BYTES = 256 << 20

Request = Tuple[str, Optional[int]]


class Group:
    """This rank's place in a process group, and the group's collectives,
    each failing as a WeightliftError that says a peer failed or left."""

    def __init__(self, process_group: Any) -> None:
        try:
            import torch.distributed as dist
        except ImportError:
            raise SettingError("process_group needs torch.distributed") from None
        if not dist.is_available() or not dist.is_initialized():
            raise SettingError(
                "process_group: torch.distributed is not initialized (call init_process_group first)"
            )
        import torch

        self.pg = process_group
        self.rank = dist.get_rank(process_group)
        self.size = dist.get_world_size(process_group)
        if self.rank < 0:
            raise SettingError("process_group: this process is not a member of the group")
        backend = str(dist.get_backend(process_group)).lower()
        #: Where exchanged bytes live: the GPU for NCCL, host memory else.
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        )

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except RuntimeError as e:  # torch.distributed's errors among them
            raise WeightliftError(
                f"rank {self.rank} of {self.size}: {what}: the group's collective failed ({e}); "
                "a rank failed or left the group"
            ) from e

    def gather(self, obj: Any, what: str) -> List[Any]:
        """`obj` of every rank, in rank order."""
        import torch.distributed as dist

        out: List[Any] = [None] * self.size
        self._call(what, lambda: dist.all_gather_object(out, obj, group=self.pg))
        return out

    def agree(self, error: Optional[BaseException], what: str) -> None:
        """Learn whether any rank failed at `what`; if one did, every rank
        raises the same typed error naming each failed rank and its cause."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=self.device)
        self._call(what, lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.pg))
        if not int(flag.item()):
            return
        mine = None if error is None else (type(error).__name__, str(error))
        reports = self.gather(mine, what)
        failed = [(r, c, m) for r, rep in enumerate(reports) if rep is not None for c, m in [rep]]
        cls = getattr(_errors, failed[0][1], None)
        if not (isinstance(cls, type) and issubclass(cls, WeightliftError)):
            cls = WeightliftError
        text = "; ".join(f"rank {r}: {m}" for r, _, m in failed)
        raise cls(f"{what} failed on {len(failed)} of {self.size} ranks: {text}") from error

    def exchange(self, send: Any, recv: Any, send_splits: List[int], recv_splits: List[int], what: str) -> None:
        """One all-to-all: `send_splits[d]` bytes of `send` to each rank
        `d`, and into `recv` the bytes from every rank, in rank order (both
        on this group's device)."""
        import torch.distributed as dist

        self._call(
            what,
            lambda: dist.all_to_all_single(
                recv, send, output_split_sizes=recv_splits, input_split_sizes=send_splits, group=self.pg
            ),
        )


def check_same_checkpoint(group: Group, fingerprint: Optional[int], error: Optional[BaseException]) -> None:
    """At open: every rank opened its files, and all opened the same
    checkpoint (the same file names, sizes and headers)."""
    group.agree(error, "opening the checkpoint")
    prints = group.gather(fingerprint, "comparing the checkpoints")
    differ = [r for r, p in enumerate(prints) if p != prints[0]]
    if differ:
        raise _errors.HeaderError(
            f"rank {group.rank}: ranks {differ} opened a checkpoint whose files or headers differ "
            "from rank 0's; every rank of a group must open the same checkpoint"
        )


class Plan:
    """A group load made ready on this rank: the Rust `_GroupLoad`, and for
    each of its outputs the memory it lands in and how it is viewed."""

    def __init__(self, load: Any, device: Any, framework: str) -> None:
        import torch

        self.load = load
        self.outputs = load.outputs()
        self.framework = framework
        self.views = []
        for name, dtype, shape, _ in self.outputs:
            if framework == "np":
                numpy_dtype(dtype, name)  # DtypeError for one numpy lacks
            self.views.append((torch_dtype(dtype, name), framework_shape(dtype, shape, name)))
        self.buffers = [torch.empty(n, dtype=torch.uint8, device=device) for (_, _, _, n) in self.outputs]

    def tensor(self, o: int) -> Tuple[str, Any]:
        """Output `o`, viewed as its tensor (or numpy array)."""
        import torch

        dt, shape = self.views[o]
        flat = self.buffers[o]
        if dt != torch.uint8:
            flat = flat.view(dt)
        t = flat.reshape(shape)
        return self.outputs[o][0], (t.numpy() if self.framework == "np" else t)


def plan(session: Any, group: Group, requests: Sequence[Request], device: Any, framework: str) -> Plan:
    """The group's load of every rank's `requests` (the same schedule on
    every rank), with this rank's outputs allocated on `device`: gathers
    the requests, and agrees on failures (a tensor split along a dimension
    it lacks, a dtype torch lacks, no memory for the outputs) before any
    exchange.

    A round reads at most ROUND_BYTES / n per rank, so that what a rank
    sends (its reads, to up to n ranks) and receives in a round stays about
    ROUND_BYTES."""
    everyone = group.gather((list(requests), ROUND_BYTES), "gathering the requests")
    wants = [list(w) for w, _ in everyone]
    round_bytes = max(min(b for _, b in everyone) // group.size, 4096)
    made, error = None, None
    try:
        made = Plan(session.group(wants, group.rank, round_bytes), device, framework)
    except Exception as e:  # reported to every rank by agree
        error = e
    group.agree(error, "planning the group's load")
    assert made is not None
    return made


def run(plan: Plan, group: Group) -> Iterator[Tuple[str, Any]]:
    """Run `plan` with the group: yields this rank's tensors as each
    completes. Every rank must run it to the end: one that stops early (its
    iterator closed or dropped) still takes part in the remaining exchanges,
    discarding what they bring, but one that keeps an unfinished iterator
    keeps its peers waiting in the next exchange."""
    import torch

    load = plan.load

    def step(k: int) -> List[int]:
        """Round `k`: read and pack, agree, exchange, put the bytes in
        place; the outputs it completes."""
        error, packed, send, recv = None, None, None, None
        try:
            packed = load.round(k)
            send = torch.from_dlpack(packed[0])
            if send.device != group.device:
                send = send.to(group.device)
            recv = torch.empty(sum(packed[2]), dtype=torch.uint8, device=group.device)
        except Exception as e:  # reported to every rank by agree
            error = e
        group.agree(error, f"reading round {k}")
        _, send_splits, recv_splits, unpack, complete = packed
        group.exchange(send, recv, send_splits, recv_splits, f"exchanging round {k}")
        for o, at, n, recv_at in unpack:
            plan.buffers[o][at : at + n].copy_(recv[recv_at : recv_at + n])
        return complete

    done = 0  # rounds run
    try:
        for o, (_, _, _, n) in enumerate(plan.outputs):
            if n == 0:
                yield plan.tensor(o)
        while done < load.rounds:
            complete = step(done)
            done += 1
            for o in complete:
                yield plan.tensor(o)
    except GeneratorExit:
        # Stopped early: take part in the rest, so that no peer waits for
        # this rank in an exchange.
        while done < load.rounds:
            step(done)
            done += 1
        raise
