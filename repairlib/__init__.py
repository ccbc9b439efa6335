"""repairlib: align, interpolate and REPAIR independently trained PyTorch networks.

Reproduces Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair"
(ICLR 2023). The common case is one call::

    import repairlib
    merged = repairlib.merge(model_a, model_b, train_batches)          # align + interpolate + REPAIR

N networks (model soups, federated rounds) are aligned to the first one, averaged and REPAIRed in one call::

    merged = repairlib.merge_many([model_1, model_2, model_3], train_batches, weights=[0.5, 0.3, 0.2])

and each step is a function of its own::

    perms = repairlib.align(model_a, model_b, train_batches, stats_scope="conv")
    model_b2 = repairlib.permute(model_b, perms)
    merged = repairlib.repair(repairlib.interpolate(model_a, model_b2, 0.5), model_a, model_b2,
                              train_batches, alpha=0.5, stats=perms.endpoint_stats)

Modules, in import order (each imports only those before it): plumbing, distributed, data, models, batchnorm,
evalcache, evaluation, train, zoo, spec, stats, points, endpoints, alignment, interpolation, fusion, correction,
metrics, pipeline, analysis, baselines, plots, book, cli.
"""

__version__ = "0.1.0"

from repairlib.alignment import align, permute
from repairlib.batchnorm import reset_bn
from repairlib.correction import repair
from repairlib.data import loader
from repairlib.endpoints import endpoint_stats
from repairlib.evaluation import evaluate
from repairlib.interpolation import interpolate
from repairlib.metrics import barrier, variance_ratio
from repairlib.pipeline import merge, merge_many
from repairlib.spec import PermutationSpec, permutation_spec
from repairlib.zoo import load, save

__all__ = [
    "PermutationSpec", "align", "barrier", "endpoint_stats", "evaluate", "interpolate", "load", "loader", "merge",
    "merge_many", "permutation_spec", "permute", "repair", "reset_bn", "save", "variance_ratio",
]
