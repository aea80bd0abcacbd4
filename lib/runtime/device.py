"""Where a run executes: the torch device and the number of CPU threads.

Both are resolved once, at an entry point (training, evaluation), right after the
options are checked, and passed down as arguments.
"""
import os
from dataclasses import dataclass, field

from lib.errors import XDimError, first_line


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a run executes, whatever it computes.

    device: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...;
    amp: 'none' or 'bf16' (autocast for the encoders and the similarity);
    threads: torch CPU threads (0: OMP_NUM_THREADS when set, else all cores but one).
    Each field is also a command-line option of every script (help in its metadata).
    """

    device: str = field(default="auto", metadata={
        "help": "torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ..."})
    amp: str = field(default="none", metadata={
        "help": "autocast precision for encoders and similarity (loss stays float32)", "choices": ("none", "bf16")})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads; 0: OMP_NUM_THREADS if set, else all cores but one "
                "(docs/training.md, \"CPU threads\")"})

    def torch_device(self):
        """The torch.device named by `device`, checked usable here (XDimError otherwise)."""
        return resolve_device(self.device)

    def apply_threads(self):
        """Set torch's CPU threads (`apply_threads`) -> the count in use."""
        return apply_threads(self.threads)


def resolve_device(name="auto"):
    """'auto' -> CUDA when available, else CPU; otherwise the named device, checked usable here.

    Raises XDimError (one line) for a malformed name or a device this machine lacks.
    """
    import torch
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise XDimError(f"--device {name}: {first_line(exc)}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise XDimError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
                            f"{build}); use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise XDimError(f"--device {name}: this machine has {count} CUDA device(s), "
                            f"numbered 0 to {count - 1}")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError):  # torch's text lists every dispatch key: too long for one line
            raise XDimError(f"--device {name}: torch {torch.__version__} has no usable {device.type} device on "
                            f"this machine; use --device cpu or auto") from None
    return device


def cpu_cores():
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads():
    """The automatic intra-op thread count: every core but one (at least one).

    Leaving a core free keeps a training step from stalling when another process
    takes a core (tests/benchmarks/bench_threads.py; docs/training.md, "CPU threads").
    """
    return max(1, cpu_cores() - 1)


def apply_threads(threads=0):
    """Set torch's intra-op CPU threads: `threads` if > 0; with 0, OMP_NUM_THREADS when
    set (torchrun sets it), else `default_threads()`. -> the count in use."""
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()
