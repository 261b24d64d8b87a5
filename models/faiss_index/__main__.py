"""CLI: build an index from an item-embedding artifact, or inspect / query one.

  python -m models.faiss_index build --embeddings DIR --base BASE --name NAME \
      [--index_type auto|flat|ivf|hnsw] [--flat_threshold 50000] [--target_recall 0.95] [--k 50]
  python -m models.faiss_index info --base BASE/NAME
  python -m models.faiss_index similar --base BASE/NAME --item ID [--k 10]
"""

from __future__ import annotations

import argparse
import json
import sys

from models.faiss_index import builder
from models.faiss_index.index import latest_version_dir, load_index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.faiss_index")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a new index version")
    b.add_argument("--embeddings", required=True, help="item-embedding artifact directory")
    b.add_argument("--base", required=True, help="index root; writes BASE/NAME/VERSION")
    b.add_argument("--name", required=True)
    b.add_argument("--version", type=int, default=None)
    b.add_argument("--index_type", default=builder.AUTO, choices=builder.INDEX_TYPES)
    b.add_argument("--large_index_type", default=builder.IVF, choices=(builder.IVF, builder.HNSW))
    b.add_argument("--flat_threshold", type=int, default=50_000)
    b.add_argument("--target_recall", type=float, default=0.95)
    b.add_argument("--k", type=int, default=50)
    b.add_argument("--num_queries", type=int, default=1000)
    i = sub.add_parser("info", help="metadata of the latest version")
    i.add_argument("--base", required=True, help="BASE/NAME")
    s = sub.add_parser("similar", help="nearest items of an item (latest version)")
    s.add_argument("--base", required=True, help="BASE/NAME")
    s.add_argument("--item", required=True)
    s.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    if args.command == "build":
        options = builder.BuildOptions(
            index_type=args.index_type, flat_threshold=args.flat_threshold,
            large_index_type=args.large_index_type, target_recall=args.target_recall, k=args.k,
            num_queries=args.num_queries)
        out = builder.build_index(args.embeddings, args.base, args.name, options, args.version)
        print(out)
        return 0
    directory = latest_version_dir(args.base)
    if directory is None:
        print(f"no built index version under {args.base}", file=sys.stderr)
        return 1
    index = load_index(directory)
    if args.command == "info":
        print(json.dumps({"directory": directory, **index.metadata}, indent=2))
        return 0
    if args.item not in index.row:
        print(f"item {args.item!r} is not in {directory}", file=sys.stderr)
        return 1
    ids, scores = index.search(index.vectors_of([args.item]), args.k + 1)
    for item, score in zip(ids[0], scores[0]):
        if item != args.item:
            print(f"{item}\t{score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
