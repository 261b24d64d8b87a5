"""`make query U=u1`: ask the running recommender (make serve) for a user's feed.

  python -m serving.query --user u1 [--k 10] [--context '{"network": "wifi"}'] [--url http://127.0.0.1:8600]
  python -m serving.query --user u1 --click i42     # ingest a click first, then recommend
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any


def post(url: str, payload: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """POSTs JSON; returns the decoded reply (raises RuntimeError with the server's error)."""
    request = urllib.request.Request(url, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{url}: HTTP {err.code}: {err.read().decode(errors='replace')}") from err


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user", required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--context", default="{}", help="JSON object of context features")
    parser.add_argument("--click", default=None, help="item id to ingest as a click first")
    parser.add_argument("--url", default="http://127.0.0.1:8600")
    parser.add_argument("--work_dir", default="work", help="accepted for `make query`; unused")
    args = parser.parse_args(argv)
    try:
        if args.click:
            post(f"{args.url}/ingest", {"user_id": args.user, "item_id": args.click})
        reply = post(f"{args.url}/recommend", {"user_id": args.user, "k": args.k,
                                                "context": json.loads(args.context)})
    except urllib.error.URLError as err:
        print(f"cannot reach the recommender at {args.url} ({err.reason}); start it with "
              "`make serve`", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{'rank':>4}  {'item_id':<16} {'score':>8}  channels")
    for rank, item in enumerate(reply["items"], 1):
        print(f"{rank:>4}  {item['item_id']:<16} {item['score']:>8.4f}  {','.join(item['channels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
