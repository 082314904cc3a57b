"""Compiled trees: LightGBM boosters turned into native code by lleaves (LLVM), stored with the model version and
used for scoring where the host can run them.

Why LightGBM only: on this project's models lleaves predicts about 2.8x as fast as ``Booster.predict`` on one
thread, to 1e-14, while treelite + tl2cgen made XGBoost 0.3-0.6x as fast as its own ``inplace_predict``
(docs/benchmarks.md), so XGBoost boosters keep predicting natively.

A library is machine code for one platform: the process triple and the CPU it was compiled for. On x86-64 it is
compiled for the ``x86-64-v2`` level (every x86-64 server of the last decade), not for the building host's CPU, so
the library a training host builds runs on executors of another generation. Every process checks the platform
before it loads a library and otherwise predicts with the booster, which gives the same numbers.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path

ARTIFACT_DIR = "compiled"
INDEX = "compiled.json"
# How each library is named in the artifact folder: the model's members by position, then the interval's bounds.
MEMBER = "member_{}.so"
INTERVAL = {"lower": "interval_lower.so", "upper": "interval_upper.so"}


@cache
def host_platform() -> str:
    """The platform a library built here runs on: ``<process triple>/<target CPU>/lleaves-<version>``."""
    from importlib.metadata import version

    import llvmlite.binding as llvm

    return f"{llvm.get_process_triple()}/{_target_cpu()}/lleaves-{version('lleaves')}"


def _target_cpu() -> str:
    import llvmlite.binding as llvm

    return "x86-64-v2" if llvm.get_process_triple().startswith("x86_64") else llvm.get_host_cpu_name()


@contextmanager
def _lleaves_model(model_text: str, library: bytes | None = None):
    """(lleaves model, its library file) in a temporary folder: lleaves reads the model's header from a text file
    and loads or writes the machine code through a file; both are in memory once ``compile()`` returns."""
    import lleaves

    with tempfile.TemporaryDirectory(prefix="taxi-compiled-") as tmp:
        model_file, library_file = Path(tmp, "model.txt"), Path(tmp, "model.so")
        model_file.write_text(model_text)
        if library is not None:
            library_file.write_bytes(library)
        yield lleaves.Model(model_file=str(model_file)), library_file


def compile_lightgbm(model_text: str) -> bytes:
    """The native library of a LightGBM model (its text format), for :func:`host_platform`."""
    with _lleaves_model(model_text) as (model, library_file):
        # finline=False: compiles a 600-tree model in about a minute instead of several, for a few % of speed.
        model.compile(cache=str(library_file), finline=False, target_cpu=_target_cpu())
        return library_file.read_bytes()


def predictor(model_text: str, platform: str, library: bytes, threads: int = 1):
    """A function float32 matrix -> predictions from the compiled library on ``threads`` threads, or None where this
    host's platform is not the library's (the caller predicts with the booster)."""
    if platform != host_platform():
        return None
    with _lleaves_model(model_text, library) as (model, library_file):
        model.compile(cache=str(library_file))  # an existing cache file is loaded, not compiled
    return lambda matrix: model.predict(matrix, n_jobs=threads)


# ---- the libraries of a model version --------------------------------------------------------------------------
def compile_version(model, interval) -> dict[str, bytes]:
    """{artifact file name: library} for every LightGBM booster the version predicts with: its members (an ensemble's
    by position) and its interval's quantile models."""
    libraries = {
        MEMBER.format(i): compile_lightgbm(m.payload) for i, m in enumerate(model.members) if m.flavor == "lightgbm"
    }
    if interval is not None:
        libraries |= {INTERVAL[k]: compile_lightgbm(getattr(interval, k).payload) for k in INTERVAL}
    return libraries


def write_version(folder: Path, libraries: dict[str, bytes]) -> None:
    """The artifact folder's files: the libraries and an index naming their platform."""
    for name, library in libraries.items():
        Path(folder, name).write_bytes(library)
    Path(folder, INDEX).write_text(json.dumps({"platform": host_platform(), "files": sorted(libraries)}, indent=1))


def attach(mv, model, interval) -> str:
    """Give ``model``'s and ``interval``'s LightGBM boosters the version's compiled libraries where this host can run
    them; returns what scoring will predict with, for the log."""
    import mlflow

    uri, platform = mv.tags.get("compiled_trees"), mv.tags.get("compiled_platform")
    if not uri:
        return "boosters (no compiled trees registered with this version)"
    if platform != host_platform():
        return f"boosters (trees compiled for {platform}; this host is {host_platform()})"
    folder = Path(mlflow.artifacts.download_artifacts(uri))
    files = json.loads((folder / INDEX).read_text())["files"]
    targets = {MEMBER.format(i): m for i, m in enumerate(model.members)}
    if interval is not None:
        targets |= {INTERVAL[k]: getattr(interval, k) for k in INTERVAL}
    for name in files:
        targets[name].compiled = (platform, (folder / name).read_bytes())
    return f"compiled trees for {len(files)} LightGBM booster(s) ({platform})"
