"""
The few helpers and constants that several scripts share, each defined once: the one-line error a user sees, atomic
file writes, the compute dtypes, the default device, torchrun's processes, GPU peak FLOP/s, how a skipped file is
reported, and how a model file is read (no code from it runs) and said to be unreadable.
"""

import os
import pickle
import re
import sys
import warnings
from collections import Counter
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# dense bf16 peak FLOP/s by GPU name, for MFU (train.py, bench.py); the first name found in the device's name wins
GPU_PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("4090", 165e12), ("L40", 181e12),
                  ("A10", 125e12), ("L4", 121e12), ("3090", 71e12), ("V100", 125e12))


# what a checkout without `git lfs pull` holds in place of a large file
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


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


# -----------------------------------------------------------------------------
# reading model files: nothing in them runs, and whatever is wrong with one is said in a few words of our own


@contextmanager
def native_stderr_quiet():
    """Hold back what C libraries write to stderr (file descriptor 2), for a single-threaded read whose failure is
    reported as one line anyway: libmpg123 prints its resync notes for any file that merely looks like MP3."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def load_tensors(path, device="cpu"):
    """torch.load for every pickle Dirt reads: weights_only, so a file that would run code is refused before any of
    it runs, and torch's warnings kept back (one about an odd pickle protocol advises turning weights_only off)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=device, weights_only=True)


def load_array(path):
    """A .npy file's array, never unpickled (an object array is refused); anything else (an .npz archive, a cut or
    foreign file) is a ValueError whose one line says why (why_unreadable)."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy's errors for a cut or foreign file have no common type (BadZipFile, TokenError)
        raise ValueError(why_unreadable(path, e)) from None
    if not isinstance(array, np.ndarray):  # an .npz archive: np.load takes any zip for one
        array.close()
        raise ValueError("it is an .npz archive, not a .npy array")
    return array


def why_unreadable(path, error):
    """Why a file did not load (error: what the reader raised), in a few words for a one-line error that names the
    file and what it should be. Never the reader's own message: torch.load's, for one, advises weights_only=False,
    which would run whatever code the file carries."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError as e:
        return f"it cannot be read ({e.strerror or type(e).__name__})"
    if not head:
        return "it is empty (0 bytes)"
    if head == LFS_POINTER:
        return "it is a Git LFS pointer, not the file: run git lfs pull in its repository"
    # the weights-only unpickler names what it refused to call; nothing else of its message is used
    needs = re.search(r"GLOBAL ([\w.]{1,100})", str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if needs:
        return f"it is a pickle that needs code to load ({needs[1]}), refused before any of it ran"
    return f"it is truncated or corrupt ({type(error).__name__})"


def load_exactly(model, state):
    """Copy `state` (name -> tensor) into `model` if it holds exactly the model's tensors (every parameter and
    persistent buffer, same names and shapes, nothing else) -> ''; otherwise, copying nothing, what keeps it from
    fitting in a few words: the tensors missing, of another shape and not in the model, counted with one example
    each (what a strict load_state_dict refuses, said in one line)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    extra = [k for k in state if k not in own]
    problems = [f"{len(missing)} of the model's {len(own)} tensors missing (e.g. {missing[0]})"] if missing else []
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, "
                        f"{list(own[k].shape)} in the model)")
    if extra:
        problems.append(f"{len(extra)} not in the model (e.g. {extra[0]})")
    if problems:
        return ", ".join(problems)
    try:
        model.load_state_dict(state)
    except Exception as e:  # tensors of the right shapes that cannot be copied in (a dtype torch will not cast)
        return f"its tensors cannot be copied into the model ({type(e).__name__})"
    return ""
