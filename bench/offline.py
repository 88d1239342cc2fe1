"""What a GPU session needs from its machine, checked before anything runs. A GPU window may have no
network, so nothing can be installed or downloaded once it has started:

- the modules the harness imports, at the versions it needs (a missing one is one line naming the wheel
  to install from the wheelhouse, docs/gpu-session.md, not an ImportError's traceback halfway through);
- every image file of the cells it will train, already in the data directory with its pinned sha256
  (the harness would otherwise try to download it).

No torch here, and none of the modules checked is imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

from bench.data import FILE_KINDS, load_files, load_images, sha256_of
from bench.errors import BenchError

# module -> (the distribution that provides it, the lowest version the harness works with or None).
# filelock: bench/rundir.py's preserve_lock_file needs 4.x, older than many a preinstalled copy.
# cpuinfo: py-cpuinfo2 (pyproject.toml) or the original py-cpuinfo, which provides the same module.
RUNTIME_MODULES: dict[str, tuple[str, str | None]] = {
    "torch": ("torch", "2.2"),
    "numpy": ("numpy", "1.24"),
    "pandas": ("pandas", "2.0"),
    "scipy": ("scipy", "1.10"),
    "skimage": ("scikit-image", "0.21"),
    "PIL": ("pillow", "10.0"),
    "matplotlib": ("matplotlib", "3.7"),
    "tabulate": ("tabulate", "0.9"),
    "tqdm": ("tqdm", "4.60"),
    "filelock": ("filelock", "4.3"),
    "cpuinfo": ("py-cpuinfo2", None),
}


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric components: '4.3.1' -> (4, 3, 1), '2.11.0+cu130' -> (2, 11, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def module_problem(module: str, distribution: str, minimum: str | None) -> str | None:
    """Why ``module`` cannot serve the harness here, or None."""
    if importlib.util.find_spec(module) is None:
        return f"module {module} is missing (install {distribution})"
    if minimum is None:
        return None
    try:
        installed = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # provided by another distribution: trust the import
        return None
    if version_tuple(installed) < version_tuple(minimum):
        return f"{distribution} {installed} is older than the {minimum} the harness needs"
    return None


def require_modules(modules: dict[str, tuple[str, str | None]] = RUNTIME_MODULES) -> None:
    """Raise a one-line BenchError naming every module that is missing or too old."""
    problems = [p for module, (dist, minimum) in modules.items() if (p := module_problem(module, dist, minimum))]
    if problems:
        raise BenchError(f"{'; '.join(problems)}: without network, install them from a wheelhouse "
                         "(make wheelhouse on a connected machine; docs/gpu-session.md)")


def require_local_images(images: tuple[str, ...], directory: Path) -> None:
    """Every manifest file of ``images`` (keys) present in ``directory`` with its pinned sha256, else a
    one-line BenchError: nothing is downloaded, nothing is altered."""
    infos, files = load_images(), load_files()
    entries = [files[(infos[key].stem, kind)] for key in images for kind in FILE_KINDS]
    missing = [e.file for e in entries if not (directory / e.file).is_file()]
    if missing:
        raise BenchError(f"{len(missing)} image file{'s' if len(missing) > 1 else ''} missing from {directory} "
                         f"(first: {missing[0]}) and a GPU session does not download: copy the files of "
                         "datasets/files.tsv there first, or point --data-dir or DIP_DATA_DIR at a copy")
    corrupt = [e.file for e in entries if sha256_of(directory / e.file) != e.sha256]
    if corrupt:
        more = f" (and {len(corrupt) - 1} more)" if len(corrupt) > 1 else ""
        raise BenchError(f"{directory / corrupt[0]}: sha256 does not match datasets/files.tsv{more}; "
                         "replace it with the pinned file")
