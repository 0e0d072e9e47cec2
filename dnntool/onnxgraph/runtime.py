"""The only module that imports onnxruntime: sessions, execution providers, device choice."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dnntool.errors import DnnToolError, UsageError


@dataclass
class Device:
    """A parsed ``--device``: ``auto``, ``cpu`` or ``cuda[:N]``."""

    kind: str
    index: int = 0

    @classmethod
    def parse(cls, text: str) -> Device:
        m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", (text or "auto").strip().lower())
        if not m or (m.group(2) is not None and m.group(1) != "cuda"):
            raise UsageError(f"invalid device '{text}' (expected auto, cpu, cuda or cuda:N)")
        return cls(m.group(1), int(m.group(2) or 0))


def _gpu_present() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def providers_for(device: Device) -> list:
    """The provider list to ask ORT for."""
    cuda_ok = "CUDAExecutionProvider" in available_providers() and _gpu_present()
    if device.kind == "cpu" or (device.kind == "auto" and not cuda_ok):
        return ["CPUExecutionProvider"]
    if device.kind == "cuda" and not cuda_ok:
        why = ("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
               if "CUDAExecutionProvider" not in available_providers() else "no NVIDIA GPU is visible")
        raise DnnToolError(f"--device cuda: {why}")
    return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]


_BLOCK: list[int] = []


def nchwc_block() -> int:
    """Channels a block of onnxruntime's NCHWc CPU kernels on this machine (8 with AVX2, 16 with
    AVX-512), read off a one-node ReorderInput; 0 where this build has no such kernels."""
    if not _BLOCK:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from dnntool.onnxgraph.builder import IR_VERSION, OPSET
        from dnntool.onnxgraph.nchwc import DOMAIN

        g = helper.make_graph([helper.make_node("ReorderInput", ["x"], ["y"], domain=DOMAIN)], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)])
        m.ir_version = IR_VERSION
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            block = int(sess.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1])
        except Exception:  # no NCHWc kernels in this build (ARM without them, other providers)
            block = 0
        _BLOCK.append(block if block in (8, 16) else 0)
    return _BLOCK[0]


def set_seed(seed: int) -> None:
    """Seed onnxruntime's default generator (training Dropout masks draw from it)."""
    import onnxruntime as ort

    ort.set_seed(int(seed))


def make_session(model, device: str | Device = "auto", threads: int | None = None,
                 profile_prefix: str | None = None, spinning: bool = True, nchwc: bool = True):
    """An InferenceSession for a ModelProto, bytes or path; returns (session, provider that runs it).

    ``spinning=False`` stops idle worker threads spinning between runs: training alternates
    sessions (gradient and update models, train and test nets) and the spinning pools of idle
    sessions fight for the cores (a 3x loss on 2 cores). A lone session keeps onnxruntime's default
    (spinning), which saves the thread wake-up on every run (15% of a 3 ms LeNet batch).
    ``profile_prefix`` turns on onnxruntime's profiler. On the CPU, convolutions whose weights are
    graph inputs (training) run in onnxruntime's blocked layout (``nchwc``; see onnxgraph/nchwc.py).
    """
    import onnxruntime as ort

    dev = device if isinstance(device, Device) else Device.parse(device)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if threads:
        opts.intra_op_num_threads = threads
    providers = providers_for(dev)  # its own clear error when CUDA is asked for and absent
    if nchwc and providers == ["CPUExecutionProvider"] and hasattr(model, "graph"):
        from dnntool.onnxgraph.nchwc import convs_to_nchwc

        blocked = convs_to_nchwc(model, nchwc_block())
        if blocked is not model:
            try:
                sess = ort.InferenceSession(blocked.SerializeToString(), sess_options=opts, providers=providers)
                return sess, sess.get_providers()[0]
            except Exception:  # the NCHWc ops are internal to onnxruntime and may change: plain Conv
                pass
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    try:
        sess = ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types for invalid models/kernels
        raise DnnToolError(f"onnxruntime cannot load the model: {' '.join(str(e).split())[:400]}") from None
    used = sess.get_providers()[0]
    if dev.kind == "cuda" and used != "CUDAExecutionProvider":
        raise DnnToolError("--device cuda: onnxruntime fell back to the CPU (CUDA libraries missing?)")
    return sess, used


def to_device(arr, device: tuple[str, int] = ("cpu", 0)):
    """A float32 OrtValue holding ``arr`` on ``device`` (("cpu", 0) or ("cuda", N)), for IO binding."""
    import numpy as np
    from onnxruntime import OrtValue

    return OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr, np.float32), *device)
