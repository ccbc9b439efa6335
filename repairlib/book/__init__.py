"""The companion book: scale profiles, provenance, results table and the papermill runner.

Every notebook in ``notebooks/`` starts with a cell tagged ``parameters``::

    profile = os.environ.get("REPAIR_PROFILE", "cpu")
    epochs = None            # any override, None = the profile's value

and reads its experiment grid with ``cfg = settings(profile, "5.1", epochs=epochs)``. ``python -m repairlib
book --profile cpu`` executes every notebook with papermill (which replaces the parameters), writes the
executed copies to ``book/executed/<profile>/`` and builds the book with ``jupyter-book build .``.

Profiles (DESIGN.md, "Scale profiles"):

- ``smoke``: every code path in seconds on 2 CPU cores; the numbers mean nothing (nbval in the tests).
- ``cpu``: real Fashion-MNIST experiments, two seed pairs per measurement; the book's pages are
  executed at this profile (measured times: ``benchmarks/README.md``).
- ``paper``: the paper's data sets, widths and Table 1 epochs, for a GPU with the data at hand.

One module per concept, each importing only those above it; every name is re-exported here
(``from repairlib import book; book.settings(...)``):

- :mod:`repairlib.book.profiles`: the profiles' tables and a section's :func:`settings`;
- :mod:`repairlib.book.provenance`: what every executed page states at its end;
- :mod:`repairlib.book.coverage`: the paper item by item (:data:`CLAIMS`: each figure panel and number,
  its page and the test a measurement must pass);
- :mod:`repairlib.book.evidence`: per-seed-pair values, a paired bootstrap over test images,
  noise-aware verdicts, plain measurement records (:func:`measure`) and the "Does it match the paper?"
  box (:func:`match_box`);
- :mod:`repairlib.book.results`: the paper's numbers, ours (``book/results/*.json``), the Markdown tables
  and the coverage index;
- :mod:`repairlib.book.runner`: papermill over the notebooks, then ``jupyter-book build`` (:func:`run_book`).
- :mod:`repairlib.book.colab`: the first cell of every notebook (install command from ``_config.yml``'s
  repository URL, and the estimated time on a free Colab GPU from the measured cpu times).
"""

from repairlib.book.coverage import (
    CAUSE_KEYS,
    CAUSES,
    CLAIM_KEYS,
    CLAIMS,
    claim,
    figure_panels,
    section_claims,
)
from repairlib.book.evidence import (
    bootstrap,
    bootstrap_difference,
    bootstrap_mean,
    cause_box,
    claim_table,
    interior,
    judge,
    match_box,
    measure,
    seed_pairs,
    seed_spread,
    slope,
    stack,
    trend,
    verdict,
)
from repairlib.book.profiles import (
    ALPHAS11,
    CPU,
    CPU_CONV,
    CPU_EXAMPLES,
    CPU_MLP,
    CPU_RESNET20,
    FM,
    MLP10,
    NOTEBOOKS,
    PAPER,
    PROFILES,
    RESNET20_BN,
    SECTIONS,
    SMOKE,
    aligned_pair,
    check_profile,
    check_section,
    describe,
    loaders,
    recipe_overrides,
    settings,
    trained_pair,
)
from repairlib.book.provenance import (
    ROOT,
    device_name,
    git_commit,
    provenance_markdown,
    provenance_record,
    show_provenance,
)
from repairlib.book.results import (
    QUALITY_BEGIN,
    QUALITY_COLUMNS,
    QUALITY_END,
    QUALITY_FILE,
    REFERENCE,
    REFERENCE_KEYS,
    RESULTS_BEGIN,
    RESULTS_END,
    book_results_dir,
    book_root,
    coverage_index,
    load_causes,
    load_claims,
    load_measurements,
    load_results,
    markdown_table,
    paper_vs_ours,
    quality_table,
    results_dir,
    results_table,
    save_results,
    write_results_page,
)
from repairlib.book.runner import (
    build_book,
    execute,
    executed_dir,
    kernel_environment,
    kernel_name,
    parameter_names,
    parse_overrides,
    parse_value,
    plan_parameters,
    previous_seconds,
    run_book,
    run_notebooks,
    select_notebooks,
)

__all__ = [
    "ALPHAS11",
    "CAUSES",
    "CAUSE_KEYS",
    "CLAIMS",
    "CLAIM_KEYS",
    "CPU",
    "CPU_CONV",
    "CPU_EXAMPLES",
    "CPU_MLP",
    "CPU_RESNET20",
    "FM",
    "MLP10",
    "NOTEBOOKS",
    "PAPER",
    "PROFILES",
    "QUALITY_BEGIN",
    "QUALITY_COLUMNS",
    "QUALITY_END",
    "QUALITY_FILE",
    "REFERENCE",
    "REFERENCE_KEYS",
    "RESNET20_BN",
    "RESULTS_BEGIN",
    "RESULTS_END",
    "ROOT",
    "SECTIONS",
    "SMOKE",
    "aligned_pair",
    "book_results_dir",
    "book_root",
    "bootstrap",
    "bootstrap_difference",
    "bootstrap_mean",
    "build_book",
    "cause_box",
    "check_profile",
    "check_section",
    "claim",
    "claim_table",
    "coverage_index",
    "describe",
    "device_name",
    "execute",
    "executed_dir",
    "figure_panels",
    "git_commit",
    "interior",
    "judge",
    "kernel_environment",
    "kernel_name",
    "load_causes",
    "load_claims",
    "load_measurements",
    "load_results",
    "loaders",
    "markdown_table",
    "match_box",
    "measure",
    "paper_vs_ours",
    "parameter_names",
    "parse_overrides",
    "parse_value",
    "plan_parameters",
    "previous_seconds",
    "provenance_markdown",
    "provenance_record",
    "quality_table",
    "results_dir",
    "results_table",
    "run_book",
    "run_notebooks",
    "save_results",
    "section_claims",
    "seed_pairs",
    "seed_spread",
    "select_notebooks",
    "settings",
    "show_provenance",
    "slope",
    "stack",
    "recipe_overrides",
    "trained_pair",
    "trend",
    "verdict",
    "write_results_page",
]
