"""Training throughput of one process vs 1 and 2 local workers (ParameterServerStrategy).

    python -m bench.training_scale [--num_train 8000] [--epochs 2]

Writes bench/results/training_scale.json: for the same NFwFM, data and epoch
budget, the training examples/s of single-process training
(models.ranking.train), and of models.distributed.train with 1 and with 2
local worker processes (2 PS each), plus the parameters each PS holds and
the eval AUC of every run.

Read the figures as overhead, not speedup: the local workers, parameter
servers and coordinator share this machine's cores (2 on the benchmark box,
itself shared), so a second worker adds contention and RPC traffic, not
compute. The numbers show what the distributed path costs per example on
one box; speedup needs workers on machines of their own.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from bench import stats  # noqa: E402
from feature_contract import feature_config as fc  # noqa: E402
from models.distributed import train as distributed_train  # noqa: E402
from models.ranking import synthetic_examples  # noqa: E402
from models.ranking import train as ranking_train  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "training_scale.json")
MODEL = "nfwfm"
NUM_PS = 2
# The item table (2001 x 28 x 4 bytes = 224 KB, also read by the click history)
# is split over the 2 PS at this min_shard_bytes, as a real vocabulary would be;
# 100 users keep the user signal learnable in 2 epochs.
MIN_SHARD_BYTES = 64 << 10
NUM_USERS, NUM_ITEMS = 100, 2000
NOTE = ("Overhead, not speedup: every worker, parameter server and the coordinator share this "
        "machine's CPU cores (see provenance.cpu_count and load averages), so a second local "
        "worker adds contention and RPC traffic, not compute. Speedup needs workers on their "
        "own machines.")


def measure(run, wall_key: str = "wall_seconds") -> dict[str, Any]:
    """Runs `run()` (a trainer call) and keeps the figures this benchmark reports."""
    start = time.perf_counter()
    result = run()
    out = {"train_examples_per_s": round(result["train_examples_per_s"], 1),
           "eval_click_auc": round(result["click"]["auc"], 4),
           "epochs_run": result["early_stopping"]["epochs_run"],
           wall_key: round(time.perf_counter() - start, 1)}
    if "params_per_ps" in result:
        out["params_per_ps"] = result["params_per_ps"]
        out["sharded_variables"] = {k: len(v) for k, v in result["variable_placement"].items()
                                    if len(v) > 1}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_train", type=int, default=8000)
    parser.add_argument("--num_eval", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2,
                        help="fixed epoch budget (early stopping off: patience = epochs)")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    config_path = fc.builtin_config_path("movielens")
    hparams = {"max_epochs": args.epochs, "patience": args.epochs, "batch_size": 256,
               "learning_rate": 0.01}
    record: dict[str, Any] = {"provenance": stats.provenance(sys.argv), "note": NOTE,
                              "model": MODEL, "hparams": hparams,
                              "data": {"config": "movielens", "generator":
                                       "models.ranking.synthetic_examples",
                                       "num_train": args.num_train, "num_eval": args.num_eval,
                                       "num_users": NUM_USERS, "num_items": NUM_ITEMS},
                              "num_ps": NUM_PS, "min_shard_bytes": MIN_SHARD_BYTES, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_examples.write_ranking_examples(
            tmp, fc.load(config_path), num_train=args.num_train, num_eval=args.num_eval,
            num_users=NUM_USERS, num_items=NUM_ITEMS, seed=0)
        common = (MODEL, config_path, data["train_pattern"], data["eval_pattern"],
                  data["vocab_dir"], hparams, None)
        record["runs"]["single_process"] = measure(lambda: ranking_train.train(*common))
        for workers in (1, 2):
            flag = f"local:workers={workers},ps={NUM_PS}"
            # wall_seconds includes starting and stopping the server processes.
            record["runs"][flag] = measure(lambda f=flag: distributed_train.train(
                *common, training_cluster=f, min_shard_bytes=MIN_SHARD_BYTES))
    record["provenance"]["load_average_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(json.dumps(record["runs"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
