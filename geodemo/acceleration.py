"""Where the fast GPU paths may run: torch.compile and CUDA graphs need a CUDA device that the process owns and,
for compile, Triton. ZeroGPU Spaces (the `spaces` package importable and SPACE_ID set) lend a GPU per call and
support neither, so there the eager kernels run."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


def zero_gpu() -> bool:
    """True inside a Hugging Face ZeroGPU Space."""
    return bool(os.environ.get("SPACE_ID")) and importlib.util.find_spec("spaces") is not None


def graphs_allowed(device: torch.device | str) -> bool:
    """Whether CUDA graphs may capture work on `device`: a CUDA device outside ZeroGPU."""
    return torch.device(device).type == "cuda" and not zero_gpu()


@functools.cache
def _triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def compile_allowed(device: torch.device | str) -> bool:
    """Whether the default paths compile with torch.compile on `device`: CUDA with Triton, outside ZeroGPU.
    (On a CPU compiling costs ~25-40 s per input shape for a 1.3-1.6x faster pass: an explicit option only.)"""
    return graphs_allowed(device) and _triton()
