"""Write the book's source notebooks (no outputs) from plain Python descriptions.

    python notebooks/_make_notebooks.py            # every notebooks/_src_<stem>.py -> notebooks/<stem>.ipynb
    python notebooks/_make_notebooks.py 00_quickstart

A description is a module ``notebooks/_src_<stem>.py`` with a function ``cells()`` returning a list of
cells made by the helpers below. Every notebook has the same frame, which the runner
(``python -m repairlib book``) and the tests (nbval, stale-results check) rely on:

1. a title and introduction (``md``),
2. ``install_cell()``: installs repairlib from the repository when it is missing (Colab, Binder),
3. ``parameters_cell(...)``: tagged ``parameters``; ``profile`` from ``$REPAIR_PROFILE`` (default
   "cpu") and one override per setting, each ``None`` (= the profile's value),
4. ``setup_cell(section, ...)``: imports, ``start = time.time()``, ``cfg = book.settings(...)``,
5. the story (``md``) and the experiments (``code``; ``caption=`` turns a figure output into a numbered
   figure with a caption in the book),
6. ``provenance_cell()``: the provenance table (profile, data set, device, seeds, commit, ...).

Notebooks written by hand in Jupyter are fine too, as long as they keep this frame.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import nbformat
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def repository_url() -> str:
    """The repository URL, set in one place: ``repository.url`` of ``_config.yml``."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(source: str, tags=(), caption: str | None = None, name: str | None = None):
    """A code cell; ``caption``/``name`` make its image output a captioned, referenceable figure (myst-nb)."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    if caption:
        cell.metadata["mystnb"] = {"figure": {"caption": caption, **({"name": name} if name else {})}}
    return cell


def install_cell():
    url = repository_url()
    return code(f'''
# Colab / Binder: install repairlib (and the book's plotting tools) when it is missing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("repairlib") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "repairlib[book] @ git+{url}"])
''', tags=["hide-cell"])


def parameters_cell(*overrides: str):
    """``profile`` plus one ``None``-defaulting override per name (each a key of ``book.settings``)."""
    lines = ["import os", "", 'profile = os.environ.get("REPAIR_PROFILE", "cpu")  # "smoke" | "cpu" | "paper"']
    if overrides:
        lines.append("# overrides of repairlib.book.settings(profile, ...); None = the profile's value")
        lines += [f"{name} = None" for name in overrides]
    return code("\n".join(lines), tags=["parameters"])


def setup_cell(section: str, *overrides: str, imports: str = ""):
    args = ", ".join([f'profile, "{section}"', *(f"{name}={name}" for name in overrides)])
    call = f"cfg = book.settings({args})"
    if len(call) > 88:  # one line per group of arguments, to fit the book's code width
        call = "cfg = book.settings(\n" + textwrap.fill(args, 84, initial_indent="    ",
                                                       subsequent_indent="    ", break_long_words=False,
                                                       break_on_hyphens=False) + "\n)"
    return code(f'''
import time

start = time.time()

import repairlib
from repairlib import book, data, plots, zoo
{imports}
{call}
cfg
''')


def provenance_cell():
    return code("book.show_provenance(profile, cfg, start)")


def load_description(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(stem: str, cells: list) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids, so regenerating an unchanged notebook is a no-op
        cell.id = f"{stem.replace('_', '-')}-{i:02d}"
    nbformat.validate(nb)
    path = HERE / f"{stem}.ipynb"
    path.write_text(nbformat.writes(nb) + "\n")
    return path


def main(argv: list) -> int:
    sources = sorted(HERE.glob("_src_*.py"))
    if argv:
        sources = [HERE / f"_src_{stem}.py" for stem in argv]
        missing = [str(p) for p in sources if not p.exists()]
        if missing:
            print(f"error: no description {', '.join(missing)}", file=sys.stderr)
            return 2
    for path in sources:
        stem = path.stem.removeprefix("_src_")
        print(write(stem, load_description(path).cells()).relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main(sys.argv[1:]))
