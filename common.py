"""
The few helpers and constants that several scripts share, each defined once: the one-line error a user sees, atomic
file writes, the compute dtypes, the default device, torchrun's processes, GPU peak FLOP/s, how a skipped file is
reported.
"""

import os
import sys
from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# dense bf16 peak FLOP/s by GPU name, for MFU (train.py, bench.py); the first name found in the device's name wins
GPU_PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("4090", 165e12), ("L40", 181e12),
                  ("A10", 125e12), ("L4", 121e12), ("3090", 71e12), ("V100", 125e12))


def fail(message, code=1):
    """A user's mistake: one line on stderr naming the setting or file and the fix, and a non-zero exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@contextmanager
def atomic_file(path):
    """A binary file to write under a temporary name, synced to disk and renamed into place when the block ends (and
    removed if it raises): a crash mid-write leaves the previous file (or none), never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write(path, write):
    """atomic_file for a file written in one go, by write(binary file object)."""
    with atomic_file(path) as f:
        write(f)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype():
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def check_device(device, dtype=None):
    """Raise ValueError (one line) for a device this machine lacks or a dtype name not in DTYPES."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device is cuda but no GPU is visible; pass --device=cpu")


def init_distributed(device, backend="", timeout=None):
    """torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) -> (ddp, rank, local_rank, world_size, device), the
    process group started: each process on the GPU of its local rank, nccl on CUDA and gloo on CPU unless backend
    names one. Without torchrun: (False, 0, 0, 1, device) and no process group. train.py and prepare.py."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1, device
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend or ("nccl" if device.startswith("cuda") else "gloo"),
                                         **({"timeout": timeout} if timeout else {}))
    return True, rank, local_rank, world_size, device


def gpu_peak_flops(device):
    """Dense bf16 peak FLOP/s of a CUDA device from GPU_PEAK_FLOPS, 0.0 for one not in the table."""
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_FLOPS if key in name), 0.0)


def skip_line(name, reason, detail=""):
    """How a script reports a file of a list that it skips (prepare.py, eval.py): the same words everywhere."""
    return f"skip {name}: {reason}" + (f" ({detail})" if detail else "")


def skip_summary(reasons):
    """The skipped files counted by reason, most first: '3 missing audio, 1 unreadable'."""
    return ", ".join(f"{n} {r}" for r, n in sorted(Counter(reasons).items(), key=lambda kv: (-kv[1], kv[0])))
