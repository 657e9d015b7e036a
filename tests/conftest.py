"""Suite-wide setup: without a GPU, generated Triton kernels run in the Triton interpreter."""

import os

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # torch is optional for the IR and simulator tests
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
