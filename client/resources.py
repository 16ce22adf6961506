"""What a site's round used: peak memory of the process and, on a GPU, of the device.

Reported to the coordinator (``resources/<figure>`` in the reply's report, logged as
``site/<site>/<figure>``) and to the site's own MLflow. The process figure is the peak of the
whole worker process since it started (sites sharing one process share it); the GPU figure is
this round's peak, reset when the round starts.
"""

from __future__ import annotations

import resource
import sys

import torch


def start_round(device: torch.device) -> None:
    """Begin a round's GPU peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def resource_figures(device: torch.device) -> dict[str, float]:
    """``peak_memory_mb`` of the process; on CUDA also ``gpu_peak_memory_mb`` of the round and the
    device's ``gpu_memory_mb``."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    figures = {"peak_memory_mb": peak / (2**20 if sys.platform == "darwin" else 2**10)}
    if device.type == "cuda":
        figures["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        figures["gpu_memory_mb"] = torch.cuda.get_device_properties(device).total_memory / 2**20
    return figures
