"""The optional compiled per-event loops of the sessionize job.

`beam_jobs/_fastloops.c` holds C translations of the loops that run once per
raw event: the JSON-line fast path of `EventParser.parse_batch`, the per-event
loop of `UserExampleBuilder.build`, label attribution and tallies, per-user
time spans and TFRecord framing. setup.py builds it when a C
compiler is present (`make install` on a machine with gcc); without one the
build skips it and the job runs its Python twins, which write the same bytes
(tests/beam_jobs/test_compiled_loops.py) only slower. FEEDREC_PURE_PYTHON=1
turns the compiled loops off for a run.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

ENV_PURE_PYTHON = "FEEDREC_PURE_PYTHON"
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fastloops.c")


def _load() -> ModuleType | None:
    """The built module, unless it is missing or older than its source.

    An editable install builds the module once; a later pull that changes
    the C file leaves the old build behind, whose loops would no longer be
    the Python twins' translation. Such a build is not used (`make install`
    rebuilds it: the install stamp depends on the C file).
    """
    try:
        from beam_jobs import _fastloops
    except ImportError:  # not built (no compiler at install time): the Python loops run
        return None
    built = getattr(_fastloops, "__file__", None)
    if (built and os.path.exists(_SOURCE)
            and os.path.getmtime(_SOURCE) > os.path.getmtime(built)):
        logging.getLogger(__name__).warning(
            "beam_jobs/_fastloops.c is newer than its build %s: running the Python loops; "
            "`make install` (pip install -e .) rebuilds it", built)
        return None
    return _fastloops


_MODULE = _load()


def available() -> bool:
    """Whether the compiled loops were built for this interpreter."""
    return _MODULE is not None


def wanted(use: bool | None) -> bool:
    """Whether a parser / builder asked with `use` runs the compiled loops.

    Args:
      use: None = when built and FEEDREC_PURE_PYTHON is unset; False = never;
        True = always (the equality tests).

    Raises:
      ImportError: use=True and the module was not built.
    """
    if use is None:
        return _MODULE is not None and os.environ.get(ENV_PURE_PYTHON, "") in ("", "0")
    if use and _MODULE is None:
        raise ImportError("beam_jobs._fastloops is not built: reinstall with a C compiler "
                          "(pip install -e . builds it)")
    return bool(use)


def module() -> ModuleType:
    """The compiled module (call only after `wanted` returned True)."""
    assert _MODULE is not None
    return _MODULE
