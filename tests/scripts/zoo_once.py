"""``zoo.trained`` of a tiny plain MLP into the cache ``sys.argv[1]``; under torchrun all ranks train it
together and rank 0 writes it. Prints the number of checkpoint files each rank sees afterwards."""

import sys
from pathlib import Path

import torch

from repairlib import distributed, zoo

torch.set_num_threads(1)
model = zoo.trained({"arch": "mlp", "depth": 2, "width": 32, "init": "he"}, "fashion_mnist", epochs=1, seed=0,
                    train_subset=400, batch_size=100, lr=0.05, device="cpu", cache_dir=sys.argv[1])
print(f"rank {distributed.rank()} sees {len(list(Path(sys.argv[1]).rglob('*.pt')))} checkpoint(s)")
