"""The command lines of the trainers and of the recall evaluation, built one way.

Every trainer (`python -m models.<name>.train`) takes the arguments of its
`train(...)` function as flags (`--config`, `--examples`, `--vocab`,
`--items`, `--hparams`, `--export_dir`), prints the returned metrics as JSON
and can write them to `--out`. Argument errors exit 2 with argparse's usage
line; errors of the input itself (a missing file, a bad hparam, too little
data) exit 1 with one `error: ...` line instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from models.json_safe import json_safe

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

# What bad input raises below the command line: config errors (FeatureConfigError,
# the model configs' errors, ValidationError are ValueErrors), missing files
# (open / np.load raise OSError, tf.io.gfile an OpError such as NotFoundError)
# and a missing key of a JSON / artifact file. Anything else is a bug and keeps
# its traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError,
                                                 tf.errors.OpError)

ITEMS_REQUIRED, ITEMS_OPTIONAL = "required", "optional"


def json_object(text: str) -> dict[str, Any]:
    """argparse type of `--hparams`: a JSON object (e.g. '{"max_epochs": 3}').

    Raises:
      argparse.ArgumentTypeError: not JSON, or JSON but not an object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"want a JSON object such as '{{\"max_epochs\": 3}}', got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a cutoff or a count: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def trainer_parser(prog: str, description: str, kind: str,
                   items: str | None) -> argparse.ArgumentParser:
    """The flags shared by every trainer.

    Args:
      prog: the command (`python -m models.two_tower.train`).
      description: first line of --help.
      kind: the examples it trains on (a sessionize output folder: ranking,
        retrieval or item2vec).
      items: ITEMS_REQUIRED, ITEMS_OPTIONAL, or None (no --items flag).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="feature config YAML of the dataset")
    parser.add_argument("--examples", required=True,
                        help=f"{kind} examples directory (OUT/{kind} of the sessionize job): "
                             f"Split-train trains, Split-eval is scored once")
    parser.add_argument("--vocab", required=True, help="vocabulary directory (OUT/vocab)")
    if items is not None:
        parser.add_argument("--items", required=items == ITEMS_REQUIRED, default=None,
                            help="item catalogue TFRecords glob, e.g. 'OUT/items/*.gz'"
                                 + ("" if items == ITEMS_REQUIRED else " (optional)"))
    parser.add_argument("--hparams", type=json_object, default={},
                        help="JSON object of config overrides, e.g. '{\"max_epochs\": 3}'")
    parser.add_argument("--export_dir", required=True, help="where the trained model is written")
    add_out_flag(parser)
    return parser


def add_out_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="also write the metrics JSON to this file (stdout always gets it)")


def emit(result: Mapping[str, Any], out: str | None) -> None:
    """Writes result as JSON to `out` when set, then prints it on stdout.

    The file comes first: a closed stdout (`... | head`) must not lose it.
    """
    text = json.dumps(json_safe(result), indent=2, sort_keys=True)
    if out:
        directory = os.path.dirname(out)
        if directory:
            tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(out, "w") as f:
            f.write(text + "\n")
    print(text)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
        action: Callable[[argparse.Namespace], Mapping[str, Any]]) -> int:
    """Parses argv, runs action(args) and emits its result.

    Returns:
      0 on success, 1 when the input is bad (one `error: ...` line on stderr).
    Raises:
      SystemExit: 0 for --help, 2 for bad arguments (argparse).
    """
    args = parser.parse_args(argv)
    try:
        result = action(args)
    except INPUT_ERRORS as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{parser.prog}: error: {type(err).__name__}: {message}", file=sys.stderr)
        return 1
    emit(result, args.out)
    return 0


def recall_trainer_main(train: Callable[..., dict[str, Any]], model_name: str, doc: str,
                        kind: str, items: str, argv: Sequence[str] | None) -> int:
    """The command line of a recall trainer (models.<model_name>.train.train).

    The trainers share one signature: train(config_path, examples_dir,
    vocab_dir, items_pattern, hparams, export_dir), as
    components.adapters.train_recall calls them.

    Args:
      train: the trainer's train function.
      model_name: its package under models/.
      doc: its module docstring (the first line describes the command).
      kind: the examples it trains on (retrieval or item2vec).
      items: ITEMS_REQUIRED or ITEMS_OPTIONAL.
      argv: the arguments (None: sys.argv[1:]).
    """
    parser = trainer_parser(f"python -m models.{model_name}.train", doc.splitlines()[0], kind,
                            items)
    return run(parser, argv, lambda a: train(a.config, a.examples, a.vocab, a.items, a.hparams,
                                             a.export_dir))
