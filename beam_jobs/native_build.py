"""Command line of beam_jobs.native (its own module: the package imports
beam_jobs.native first, so `python -m beam_jobs.native` would run it twice).

    python -m beam_jobs.native_build [build]   # `make install` runs it
    python -m beam_jobs.native_build status
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from beam_jobs import native


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in ([], ["build"]):
        manifest = native.build()
        if manifest.get("error"):
            print(f"beam_jobs.native: no compiled modules, the sessionize job runs as pure "
                  f"Python (same outputs, slower): {manifest['error']}", file=sys.stderr)
        else:
            print(f"beam_jobs.native: compiled {', '.join(manifest['modules'])} "
                  f"(Cython {manifest['cython']}) into {native.NATIVE_DIR}")
        return 0
    if args == ["status"]:
        print(json.dumps(native.status(), indent=2))
        return 0
    print("usage: python -m beam_jobs.native_build [build|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
