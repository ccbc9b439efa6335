"""Test-wide settings: quiet progress bars, one torch thread per test process.

The suite runs under pytest-xdist (``make test`` uses ``-n 2`` on 2 cores): one thread per worker
keeps the small tensors of unit tests from fighting over the cores.
"""

import os

import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("REPAIR_DOWNLOAD", "0")
torch.set_num_threads(1)
