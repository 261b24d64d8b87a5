"""AllBlessed: AND of two Evaluator blessings."""

import os

from absl.testing import parameterized
from tfx.types import standard_artifacts

from components.blessing import AllBlessed
from tests.components.helpers import executor_fn, new_artifact, temp_dir


class AllBlessedTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("both", 1, 1, 1), ("first_only", 1, 0, 0), ("second_only", 0, 1, 0), ("neither", 0, 0, 0))
    def test_truth_table(self, first, second, expected):
        root = temp_dir(self)
        inputs = []
        for name, value in (("first", first), ("second", second)):
            artifact = new_artifact(standard_artifacts.ModelBlessing, root, name)
            artifact.set_int_custom_property("blessed", value)
            artifact.set_string_custom_property("current_model", "/m/1")
            inputs.append(artifact)
        out = new_artifact(standard_artifacts.ModelBlessing, root, "out")
        executor_fn(AllBlessed)(first=inputs[0], second=inputs[1], blessing=out)
        self.assertEqual(out.get_int_custom_property("blessed"), expected)
        failed = [a.uri for a in inputs if a.get_int_custom_property("blessed") != 1]
        self.assertEqual(out.get_string_custom_property("not_blessed_by"), ",".join(failed))
        self.assertEqual(out.get_string_custom_property("current_model"), "/m/1")
        self.assertTrue(os.path.exists(os.path.join(out.uri, "BLESSED" if expected
                                                    else "NOT_BLESSED")))
