"""Train a tiny plain MLP on Fashion-MNIST with repairlib.train.fit and save its weights from rank 0.

    python tests/scripts/fit_once.py OUT.pt                              # one process
    torchrun --nproc_per_node=2 tests/scripts/fit_once.py OUT.pt          # two, same global batch
"""

import sys

import torch

from repairlib import distributed, models, train

torch.set_num_threads(1)
torch.manual_seed(0)
model = models.mlp(depth=2, width=32, init="he")
rows = []  # the inputs this process's network saw in training: its share of every global batch
model[1].register_forward_hook(lambda module, args, out: rows.append(len(args[0])) if module.training else None)
result = train.fit(model, "fashion_mnist", epochs=2, seed=3, train_subset=400, batch_size=100, lr=0.05,
                   device="cpu", progress=False)
if distributed.is_main():
    torch.save({"state": model.state_dict(), "train_loss": result["train_loss"], "rows": sum(rows)}, sys.argv[1])
