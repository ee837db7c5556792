"""Memory between sweep trials: free what a finished trial left behind, and read what the process holds.

    results = run_experiment(trial_cfg, trial_dir, inputs)   # returns; its model and trainers are unreachable
    after = release_trial_memory(device)                     # MemoryReading once they are freed

A finished trial's objects are unreachable but not yet freed: they sit in reference cycles that only Python's
cyclic garbage collector breaks. trl 1.16's SFT/DPO trainers (and accelerate's mixed-precision wrapper) replace
the model's `forward` with a method bound to the model itself, so the base model, all of its weights included,
stays alive after the function that loaded it returns. The collector runs on counts of allocated Python
objects, not on bytes, so a few hundred objects holding gigabytes of GPU memory can outlive their trial while
the next one loads a second base beside them. `gc.collect()` frees them; on CUDA, `torch.cuda.empty_cache()`
then hands the freed blocks from PyTorch's caching allocator back to the driver (for the next trial's other
tensor shapes, and for other processes on the same GPU).

A function cannot drop its caller's references: call this where the trial's model, base and trainers are no
longer named (in a sweep, after `run_experiment` has returned), or `del` them first.
"""

from __future__ import annotations

import gc
import resource
from dataclasses import dataclass

import psutil
import torch


@dataclass
class MemoryReading:
    """What the process holds at one moment, in MiB.

    CUDA: `allocated_mb` live tensors, `reserved_mb` held by PyTorch's caching allocator (live tensors
    included), `device_used_mb` the device's used memory as nvidia-smi counts it (the CUDA context and other
    processes included), `peak_mb` the most allocated since the last release (or process start).
    CPU: `allocated_mb`, `reserved_mb` and `device_used_mb` are the process's resident set size now; `peak_mb`
    its peak resident set size over the whole process (the OS does not reset it).
    """

    device: str
    allocated_mb: float
    reserved_mb: float
    device_used_mb: float
    peak_mb: float


def memory_reading(device: str) -> MemoryReading:
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return MemoryReading(
            device=device,
            allocated_mb=torch.cuda.memory_allocated() / 2**20,
            reserved_mb=torch.cuda.memory_reserved() / 2**20,
            device_used_mb=(total - free) / 2**20,
            peak_mb=torch.cuda.max_memory_allocated() / 2**20,
        )
    rss = psutil.Process().memory_info().rss / 2**20
    return MemoryReading(device, rss, rss, rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def release_trial_memory(device: str) -> MemoryReading:
    """Free the unreachable objects of a finished trial and return what the process still holds.

    On CUDA the peak counter is reset afterwards, so the next reading's `peak_mb` is the next trial's own.
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reading = memory_reading(device)
        torch.cuda.reset_peak_memory_stats()
        return reading
    return memory_reading(device)
