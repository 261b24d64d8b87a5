"""Compiled forms of the sessionize job's per-event modules (optional, same outputs).

The job's remaining cost is Python work per event: parsing, joining,
sessionizing, encoding (README, `make bench-sessionize`). Cython compiles
these modules, unchanged, to C extension modules, which run the same code
without the interpreter's per-bytecode dispatch. They are the same source,
so they write the same bytes; tests/beam_jobs/test_native.py runs the job
both ways and compares every output file.

    python -m beam_jobs.native_build [build|status]   # `make install` builds

`build` compiles MODULES into beam_jobs/_native/ (not committed) and writes
a manifest with each source's SHA-256. `install` (called by
beam_jobs/__init__) puts a finder on sys.meta_path that loads a compiled
module only while its source file still has that hash, so an edited module
is imported as Python (slower, never stale) until the next build. Without
Cython or a C compiler the build records why, prints it and leaves
everything in Python; FEEDREC_PURE_PYTHON=1 turns the compiled modules off.

Only the standard library is imported here: the package imports this module
before anything else.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

PACKAGE = "beam_jobs"
# The modules of the job's per-event and per-batch work (py-spy). Not
# sessionize.py or splits.py: Beam hands a Map / FlatMap step's extra
# arguments only to a Python function (types.FunctionType), so their step
# functions must stay Python, and compiling the rest of sessionize.py
# measured no faster (1M events, alternating runs).
MODULES: tuple[str, ...] = ("event_parsing", "example_builder", "example_encoding", "raw_io")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
NATIVE_DIR = os.path.join(PACKAGE_DIR, "_native")
MANIFEST = "manifest.json"
DISABLE_ENV = "FEEDREC_PURE_PYTHON"
COMPILED, PYTHON = "compiled", "python"


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _ext_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def read_manifest(directory: str = NATIVE_DIR) -> dict[str, Any] | None:
    """The last build's manifest, or None when no build ran (or it is unreadable)."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


class NativeFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled form of a module of MODULES when it matches its source."""

    def __init__(self, directory: str = NATIVE_DIR, package_dir: str = PACKAGE_DIR):
        self._dir = directory
        self._package_dir = package_dir
        self._manifest = read_manifest(directory)

    def compiled_path(self, name: str) -> tuple[str | None, str]:
        """(path of the usable compiled module or None, why not) for a MODULES name."""
        if disabled():
            return None, f"{DISABLE_ENV} is set"
        manifest = self._manifest
        if manifest is None:
            return None, "not built (python -m beam_jobs.native_build)"
        if manifest.get("error"):
            return None, f"build failed: {manifest['error']}"
        if manifest.get("ext_suffix") != _ext_suffix():
            return None, (f"built for {manifest.get('ext_suffix')}, this Python loads "
                          f"{_ext_suffix()}")
        entry = manifest.get("modules", {}).get(name)
        if entry is None:
            return None, "not in the build"
        path = os.path.join(self._dir, entry["file"])
        if not os.path.exists(path):
            return None, f"{path} is missing"
        source = os.path.join(self._package_dir, name + ".py")
        if _sha256(source) != entry["sha256"]:
            return None, "source changed since the build"
        return path, ""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.partition(".")
        if package != PACKAGE or name not in MODULES:
            return None
        so_path, _ = self.compiled_path(name)
        if so_path is None:
            return None  # the regular finders import the .py
        loader = importlib.machinery.ExtensionFileLoader(fullname, so_path)
        return importlib.util.spec_from_file_location(fullname, so_path, loader=loader)


def install() -> None:
    """Puts the finder first on sys.meta_path (once per process)."""
    if not any(isinstance(f, NativeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, NativeFinder())


def status() -> dict[str, str]:
    """module -> "compiled" or "python (why)", for the modules imported so far as
    they were imported, the others as they would be."""
    finder = NativeFinder()
    out = {}
    for name in MODULES:
        module = sys.modules.get(f"{PACKAGE}.{name}")
        if module is not None:
            compiled = getattr(module, "__file__", "").endswith(_ext_suffix())
            out[name] = COMPILED if compiled else f"{PYTHON} ({finder.compiled_path(name)[1]})"
            continue
        so_path, why = finder.compiled_path(name)
        out[name] = COMPILED if so_path else f"{PYTHON} ({why})"
    return out


def _write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(directory, MANIFEST))


def build(directory: str = NATIVE_DIR, modules: Sequence[str] = MODULES,
          package_dir: str = PACKAGE_DIR) -> dict[str, Any]:
    """Compiles `modules` into `directory`; returns (and writes) the manifest.

    A failure (no Cython, no compiler, a compile error) is recorded in the
    manifest's "error" and leaves the modules in Python; it never raises.
    """
    try:
        import Cython
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as exc:
        manifest = {"error": f"Cython or setuptools missing: {exc}"}
        _write_manifest(directory, manifest)
        return manifest
    with tempfile.TemporaryDirectory() as tmp:
        # The exact bytes compiled are the bytes hashed: copy, hash the copy.
        src = os.path.join(tmp, "src", PACKAGE)
        os.makedirs(src)
        open(os.path.join(src, "__init__.py"), "w").close()
        hashes = {}
        for name in modules:
            shutil.copyfile(os.path.join(package_dir, name + ".py"), os.path.join(src, name + ".py"))
            hashes[name] = _sha256(os.path.join(src, name + ".py"))
        jobs = os.cpu_count() or 1
        cwd = os.getcwd()
        try:
            os.chdir(os.path.join(tmp, "src"))  # module names from the paths: beam_jobs.<name>
            extensions = cythonize(
                [Extension(f"{PACKAGE}.{name}", [f"{PACKAGE}/{name}.py"]) for name in modules],
                compiler_directives={"language_level": 3}, nthreads=jobs, quiet=True)
            dist = Distribution({"name": "feedrec-native", "ext_modules": extensions})
            command = dist.get_command_obj("build_ext")
            command.build_lib = os.path.join(tmp, "lib")
            command.build_temp = os.path.join(tmp, "temp")
            command.parallel = jobs
            dist.run_command("build_ext")
            built = {name: command.get_ext_fullpath(f"{PACKAGE}.{name}") for name in modules}
        except (Exception, SystemExit) as exc:  # distutils reports a failed compile as SystemExit
            manifest = {"error": f"{type(exc).__name__}: {exc}"}
            _write_manifest(directory, manifest)
            return manifest
        finally:
            os.chdir(cwd)
        os.makedirs(directory, exist_ok=True)
        manifest = {"cython": Cython.__version__, "ext_suffix": _ext_suffix(),
                    "python": sys.version.split()[0], "modules": {}}
        for name, path in built.items():
            file = name + _ext_suffix()
            # Replace, never overwrite in place: a running process may have
            # the old file mapped.
            shutil.copyfile(path, os.path.join(directory, file + ".tmp"))
            os.replace(os.path.join(directory, file + ".tmp"), os.path.join(directory, file))
            manifest["modules"][name] = {"file": file, "sha256": hashes[name]}
    _write_manifest(directory, manifest)
    return manifest
