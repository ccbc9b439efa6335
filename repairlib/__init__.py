"""repairlib: align, interpolate and REPAIR two independently trained PyTorch networks.

Reproduces Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair"
(ICLR 2023). The public functions are importable from the package root::

    import repairlib
    spec = repairlib.permutation_spec(model_a, example_input)
    perms = repairlib.align(model_a, model_b, data)
    model_b2 = repairlib.permute(model_b, perms, spec)
    merged = repairlib.repair(repairlib.interpolate(model_a, model_b2, 0.5), model_a, model_b2, data, alpha=0.5)
"""

__version__ = "0.1.0"

# Imported eagerly, not lazily: ``align``, ``interpolate`` and ``repair`` are both submodules and
# functions, and binding the functions here (after their submodules are loaded) keeps
# ``repairlib.align(...)`` the function however the submodules are imported later.
from repairlib.align import align, permute
from repairlib.data import loader
from repairlib.interpolate import interpolate
from repairlib.metrics import barrier, evaluate, variance_ratio
from repairlib.repair import endpoint_stats, repair, reset_bn
from repairlib.spec import PermutationSpec, permutation_spec
from repairlib.zoo import load, save

__all__ = [
    "PermutationSpec", "align", "barrier", "endpoint_stats", "evaluate", "interpolate", "load", "loader",
    "permutation_spec", "permute", "repair", "reset_bn", "save", "variance_ratio",
]
