"""The package root exposes the documented functions, whatever is imported first."""

import subprocess
import sys


def test_functions_stay_functions_after_submodule_imports():
    code = (
        "import repairlib.alignment, repairlib.interpolation, repairlib.correction, repairlib.pipeline\n"
        "from repairlib.alignment import permute\n"
        "import repairlib\n"
        "names = ['align', 'interpolate', 'repair', 'permute', 'permutation_spec', 'evaluate', 'barrier',\n"
        "         'variance_ratio', 'reset_bn', 'endpoint_stats', 'load', 'save', 'loader', 'merge']\n"
        "bad = [n for n in names if not callable(getattr(repairlib, n))]\n"
        "print('not callable:', bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
