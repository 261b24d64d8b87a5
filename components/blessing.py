"""AllBlessed: one ModelBlessing that is blessed only when every input is.

The multi-task model is evaluated by one Evaluator per head; the Pusher takes
one model_blessing, so the heads' blessings are joined here.
"""

import os

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

BLESSED_KEY = "blessed"


def all_blessed(blessings: list) -> tuple[bool, list[str]]:
    """(every blessing blessed, URIs of those that are not)."""
    failed = [b.uri for b in blessings if b.get_int_custom_property(BLESSED_KEY) != 1]
    return not failed, failed


@component
def AllBlessed(  # noqa: N802
        first: InputArtifact[standard_artifacts.ModelBlessing],
        second: InputArtifact[standard_artifacts.ModelBlessing],
        blessing: OutputArtifact[standard_artifacts.ModelBlessing]):
    """Joins two Evaluator blessings of the same model with AND.

    Args:
      first, second: ModelBlessing artifacts (custom property blessed 0/1).
      blessing: blessed = 1 iff both are; `not_blessed_by` lists the URIs of
        the blessings that failed, `sources` all of them.
    """
    ok, failed = all_blessed([first, second])
    blessing.set_int_custom_property(BLESSED_KEY, int(ok))
    blessing.set_string_custom_property("sources", ",".join([first.uri, second.uri]))
    blessing.set_string_custom_property("not_blessed_by", ",".join(failed))
    # The model the Evaluator blessed, as it records it (for Resolver strategies).
    if first.has_custom_property("current_model"):
        blessing.set_string_custom_property(
            "current_model", first.get_string_custom_property("current_model"))
    if first.has_custom_property("current_model_id"):
        blessing.set_int_custom_property(
            "current_model_id", first.get_int_custom_property("current_model_id"))
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if ok else "NOT_BLESSED"),
                           "w") as f:
        f.write("\n".join(failed) + "\n")
