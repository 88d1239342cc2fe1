"""Methods: the priors dip-bench benchmarks under Table 1's protocol, registered by name or loaded
from a Python path (docs/methods.md).

``--method NAME`` picks one: a registered name (:data:`REGISTERED`), ``package.module:callable`` or
``path/to/file.py[:callable]`` (the callable defaults to ``make_method``). The callable (a Method
subclass, or a function returning an instance) is called without arguments; its fields' defaults are
the method's, and flags override them. Torch-free: a method's module imports torch only to build.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError, unknown_choice
from bench.methods.base import Method, check_method_class

__all__ = ["BUILTIN", "REGISTERED", "LoadedMethod", "Method", "configured_method", "load_method"]

BUILTIN = "dip-bench"
# name -> "module:class", imported only when picked
REGISTERED = {
    "dip-bench": "bench.methods.dipbench:DipBench",
    "convdecoder": "bench.methods.convdecoder:ConvDecoderMethod",
}
DEFAULT_CALLABLE = "make_method"


@dataclass(frozen=True)
class LoadedMethod:
    """A method with its default fields, and where it came from (None for a registered one)."""

    method: Method
    source: str | None = None


def load_method(spec: str) -> LoadedMethod:
    """The method ``spec`` names; a BenchError (one line) if it cannot be found or does not follow the interface."""
    spec = spec.strip()
    if spec in REGISTERED:
        return LoadedMethod(_call(_attribute(*REGISTERED[spec].split(":")), spec))
    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", DEFAULT_CALLABLE)
    attr = attr or DEFAULT_CALLABLE
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise BenchError(f"--method {spec}: no Python file {path}")
        module, source = _module_from_file(path, spec), f"{path}:{attr}"
    elif ":" in spec:
        module, source = _import(target, spec), f"{target}:{attr}"
    else:
        raise BenchError(unknown_choice("unknown method", spec, REGISTERED)
                         + "; or give a Python path: package.module:make_method or path/to/file.py")
    loaded = LoadedMethod(_call(_attribute_of(module, attr, spec), spec), source)
    if loaded.method.name in REGISTERED:
        raise BenchError(f"--method {spec}: its name {loaded.method.name!r} is a registered method's; choose another")
    return loaded


def _attribute(module_name: str, attr: str):
    return getattr(importlib.import_module(module_name), attr)


def _import(module_name: str, spec: str):
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise BenchError(f"--method {spec}: cannot import {module_name} ({exc})") from None


def _module_from_file(path: Path, spec: str):
    name = f"bench_user_method_{abs(hash(str(path)))}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise BenchError(f"--method {spec}: {path} is not a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise BenchError(f"--method {spec}: running {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def _attribute_of(module, attr: str, spec: str):
    if not hasattr(module, attr):
        raise BenchError(f"--method {spec}: {module.__name__} has no {attr!r}")
    return getattr(module, attr)


def _call(factory, spec: str) -> Method:
    try:
        method = factory()
        check_method_class(method, f"--method {spec}")
    except (TypeError, ValueError) as exc:
        raise BenchError(str(exc) if str(exc).startswith("--method") else f"--method {spec}: {exc}") from None
    return method


@functools.lru_cache(maxsize=None)
def _loaded(spec: str) -> LoadedMethod:
    return load_method(spec)


def configured_method(spec: str, fields: tuple[tuple[str, typing.Any], ...] = ()) -> LoadedMethod:
    """The method ``spec`` names with ``fields`` ((name, value) pairs, from flags) set; a BenchError for
    an unknown field or a value the method refuses. Loaded once per process (a RunConfig holds the spec
    and the fields, not the instance, so that it pickles for a job that loads the method again)."""
    loaded = _loaded(spec)
    if not fields:
        return loaded
    known = {f.name for f in dataclasses.fields(loaded.method)}
    unknown = [name for name, _ in fields if name not in known]
    if unknown:
        raise BenchError(f"method {loaded.method.name!r} has no field {unknown[0]!r}")
    try:
        return LoadedMethod(dataclasses.replace(loaded.method, **dict(fields)), loaded.source)
    except ValueError as exc:
        raise BenchError(f"method {loaded.method.name!r}: {exc}") from None
