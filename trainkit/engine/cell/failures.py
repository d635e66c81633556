"""When one rank of a torchrun-started cell fails, its peers stop, and the cell ends with its status.

Ranks started by torchrun or a multi-node SLURM job have no launcher standing outside them to kill
the others when one fails (trainkit.engine.cell.launch.CellWorkers does that for local cells). A rank
that raises mid-step while its peers wait in the gradient all-reduce would otherwise go on into
the final gather, a collective the peers never join: the cell hangs until the job's time limit and
ends `timeout`, hiding the real status (an OOM, a crash). So:

    the failing rank    posts its status, detail and report on the process group's store (the
                        first failure posted wins: the others are its consequences), then aborts
                        its process group: its connections close, and a peer blocked in a gloo
                        collective with it wakes with an error at once
    every rank          runs a watchdog thread that polls the store; on a peer's failure it aborts
                        its own NCCL communicators (ncclCommAbort: how NCCL wakes a collective that
                        would otherwise wait for its timeout). gloo needs no such abort, and gets
                        none: its abort from another thread does not wake a blocked collective
                        (measured with torch 2.14); the failing peer's own teardown does
    rank 0              ends the cell with the first posted failure's status and detail, with the
                        reports of the failing rank and its own

A rank that fails before the process group exists (no GPU for its LOCAL_RANK) has no store to post
on: its peers wait in the rendezvous until its timeout.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from .record import RankReport

FIRST_FAILURE_KEY = "trainkit/first_failure"
POLL_S = 0.5
"""How often the watchdog looks at the store: a store round trip, off the training thread."""


@dataclass(frozen=True)
class Failure:
    """A rank's failure, as posted for its peers."""

    rank: int
    status: str
    detail: str
    """One line, without the rank (the record's detail adds it)."""
    report: RankReport
    """What the rank measured until it failed."""


class FailureBoard:
    """The first failure of a cell's ranks, on the default process group's store (rank 0's TCPStore,
    or torchrun's agent store), and the watchdog that stops this rank's collectives on a peer's."""

    def __init__(self, store: Any, rank: int) -> None:
        self.store, self.rank = store, rank
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    @classmethod
    def of_process_group(cls, rank: int) -> FailureBoard | None:
        """The board of this process's default group; None before the group exists (one rank)."""
        if not dist.is_initialized():
            return None
        # The store init_process_group rendezvoused on; torch keeps it for the default group.
        return cls(dist.distributed_c10d._get_default_store(), rank)

    def post(self, failure: Failure) -> Failure:
        """Post this rank's failure unless another came first; the first failure either way."""
        with contextlib.suppress(Exception):  # the store's host is gone: nobody is left to tell
            self.store.compare_set(FIRST_FAILURE_KEY, "", pickle.dumps(failure))
        return self.first() or failure

    def first(self) -> Failure | None:
        """The first failure any rank posted, or None (also when the store cannot be reached)."""
        try:
            if not self.store.check([FIRST_FAILURE_KEY]):
                return None
            return pickle.loads(self.store.get(FIRST_FAILURE_KEY))
        except Exception:  # the store's host ended: what it held is gone with it
            return None

    def watch(self) -> None:
        """Start the watchdog: on a peer's failure it aborts this rank's NCCL communicators."""
        self._watchdog = threading.Thread(target=self._watch, name="trainkit-peer-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            failure = self.first()
            if failure is None or failure.rank == self.rank:
                continue
            if dist.is_initialized() and dist.get_backend() == "nccl":
                with contextlib.suppress(Exception):  # the main thread may be tearing the group down too
                    dist.distributed_c10d._abort_process_group()
            return

    def stop(self) -> None:
        """Stop the watchdog (before this rank's own collectives end the cell or tear the group down)."""
        self._stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=POLL_S * 4)


def leave(board: FailureBoard | None) -> None:
    """Leave the process group after a failure: abort it, so that peers blocked in a collective with
    this rank wake with an error instead of waiting for their timeout."""
    if board is not None:
        board.stop()
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.distributed_c10d._abort_process_group()
