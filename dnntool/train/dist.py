"""Data-parallel training over MPI (mpi4py): the process group, the fused gradient buffer and the
``--workers N`` launcher.

A run started by ``mpirun -np N`` (MPICH's hydra, Open MPI, Intel MPI, Slurm's PMI) is detected from
the launcher's environment; ``mpi4py`` is imported only then. Every rank builds the same net from
the same seed (rank 0's, broadcast), reads its own rank-strided share of the training records,
computes the gradients of its batch, and the gradients of all ranks are summed by one
``MPI_Allreduce`` over a single fused float32 buffer and scaled by 1/N (Caffe's multi-GPU
``P2PSync``/NCCL path averages the same way before ``ApplyUpdate``), so every rank applies the same
update and the weights stay identical. The same buffer carries the logged outputs (averaged, so the
displayed loss is the global batch's) and the BatchNorm moving averages (averaged, so they stay
identical too), plus control flags (a stop or snapshot request seen by any rank), so every
decision is taken by all ranks at the same iteration and no rank waits alone in a collective.

On GPUs each rank binds ``cuda:<local rank>``; the gradients go through host memory for the
Allreduce (the portable path: a CUDA-aware MPI is not assumed).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Sequence

from dnntool.errors import DnnToolError, UsageError

#: environment variables by which MPI launchers (MPICH/Intel MPI's PMI, Open MPI, MVAPICH) tell a
#: process its world size and rank
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_ALIGN = 16  # floats: each blob's slice of the fused buffer starts on a 64-byte boundary


def _announced(names: Sequence[str], default: int) -> int:
    for var in names:
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return default


def launched_size() -> int:
    """The world size an MPI launcher announced in the environment (1 when not under MPI)."""
    return _announced(_SIZE_VARS, 1)


def launched_rank() -> int:
    """This process's rank as the MPI launcher announced it (0 when not under MPI)."""
    return _announced(_RANK_VARS, 0)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise DnnToolError("data-parallel training needs mpi4py and an MPI library:"
                           " pip install 'dnntool[mpi]'") from None
    return MPI


class Comm:
    """The MPI process group of a data-parallel run (COMM_WORLD)."""

    def __init__(self, comm=None):
        MPI = _mpi()
        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, self.rank)
        self.local_rank, self.local_size = int(node.Get_rank()), int(node.Get_size())
        node.Free()

    @classmethod
    def detect(cls) -> Comm | None:
        """The group when this process was started by an MPI launcher with more than one rank."""
        return cls() if launched_size() > 1 else None

    def allreduce(self, buf) -> None:
        """Sum ``buf`` (contiguous) over all ranks, in place."""
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def barrier(self) -> None:
        self.comm.Barrier()

    def fail(self, error: BaseException) -> None:
        """End the whole job after an error on this rank alone: the others would otherwise wait
        forever in the next Allreduce. Says what happened (one line), then MPI_Abort."""
        from dnntool.errors import DnnToolError

        code = 130 if isinstance(error, KeyboardInterrupt) else getattr(error, "exit_code", 1)
        what = str(error) if isinstance(error, DnnToolError) else f"{type(error).__name__}: {error}"
        sys.stderr.write(f"Error (rank {self.rank} of {self.size}; stopping the job): {what}\n")
        sys.stderr.flush()
        self.comm.Abort(code)

    def device(self, device: str) -> str:
        """The device this rank runs on: ``cuda`` or ``auto`` with a GPU become ``cuda:<local rank>``
        (one GPU per rank on each machine); an explicit ``cuda:N`` is offset by the local rank."""
        from dnntool.onnxgraph.runtime import Device, providers_for

        dev = Device.parse(device)
        if dev.kind == "cpu":
            return "cpu"
        if dev.kind == "auto" and providers_for(dev) == ["CPUExecutionProvider"]:
            return "cpu"
        return f"cuda:{dev.index + self.local_rank}"


class FusedBuffer:
    """One float32 buffer holding every tensor of an Allreduce, each slice 64-byte aligned."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], extra: int):
        import numpy as np

        self.slices: dict[str, tuple[int, tuple[int, ...]]] = {}
        off = 0
        for name, shape in shapes.items():
            self.slices[name] = (off, tuple(shape))
            off += -(-max(1, math.prod(shape)) // _ALIGN) * _ALIGN
        self.extra_at = off
        self.data = np.zeros(off + extra, np.float32)

    def view(self, name: str):
        off, shape = self.slices[name]
        n = math.prod(shape)
        return self.data[off:off + n].reshape(shape)

    @property
    def extra(self):
        return self.data[self.extra_at:]


def mpiexec() -> str:
    """The mpiexec to launch ranks with: beside this Python (the ``mpich`` wheel puts it in the
    virtual environment's bin), else on PATH."""
    for name in ("mpiexec", "mpirun"):
        here = os.path.join(os.path.dirname(sys.executable), name)
        if os.path.exists(here):
            return here
        found = shutil.which(name)
        if found:
            return found
    raise DnnToolError("--workers needs an MPI launcher (mpiexec) and mpi4py: pip install 'dnntool[mpi]'")


def launch(workers: int, argv: Sequence[str]) -> int:
    """Run ``dnntool <argv>`` as ``workers`` MPI ranks on this machine; returns the job's exit status
    (non-zero when any rank failed: the launcher then stops the others)."""
    import subprocess

    if workers < 1:
        raise UsageError("--workers must be at least 1")
    _mpi()  # a clear error now rather than N of them from the ranks
    cmd = [mpiexec(), "-n", str(workers), sys.executable, "-m", "dnntool", *argv]
    proc = subprocess.Popen(cmd)
    while True:  # Ctrl-C reaches the ranks too (they snapshot and stop together): wait for them
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue
