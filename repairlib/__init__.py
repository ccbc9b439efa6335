"""repairlib: align, interpolate and REPAIR two independently trained PyTorch networks.

Reproduces Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair"
(ICLR 2023). The public functions are importable from the package root::

    import repairlib
    spec = repairlib.permutation_spec(model_a, example_input)
    perms = repairlib.align(model_a, model_b, data)
    model_b2 = repairlib.permute(model_b, perms, spec)
    merged = repairlib.repair(repairlib.interpolate(model_a, model_b2, 0.5), model_a, model_b2, data, alpha=0.5)
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use, so `import repairlib` stays cheap)
_EXPORTS = {
    "loader": "data",
    "permutation_spec": "spec",
    "PermutationSpec": "spec",
    "align": "align",
    "permute": "align",
    "interpolate": "interpolate",
    "repair": "repair",
    "endpoint_stats": "repair",
    "reset_bn": "repair",
    "evaluate": "metrics",
    "barrier": "metrics",
    "variance_ratio": "metrics",
    "load": "zoo",
    "save": "zoo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f"repairlib.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'repairlib' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
