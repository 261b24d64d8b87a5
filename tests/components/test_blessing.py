"""RankingGate's verdict: AND of the Evaluators and of the heads' evaluability.

The executor on real TFMA evaluations is tested in test_gate.py.
"""

from absl.testing import parameterized

from components import eval_config
from components.blessing import decide


def _head(name: str, not_evaluable: str | None = None) -> eval_config.GateFigures:
    return eval_config.GateFigures(
        head=name, examples=100, positives=0 if not_evaluable else 10,
        not_evaluable=not_evaluable, auc=eval_config.MetricValue(0.0 if not_evaluable else 0.7),
        baseline_auc=None, diff=None, tolerance=None, min_auc=0.0, validation_ok=True)


CLICK, FOLLOW = _head("click"), _head("follow")
FOLLOW_EMPTY = _head("follow", "0 positives in eval")
CLICK_FAILED = ["auc diff vs baseline (overall) = -0.0300: change vs baseline must be >= -0.001"]


class DecideTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("both_blessed", [CLICK, FOLLOW], [True, True], [[], []], False, True, []),
        ("first_refused", [CLICK, FOLLOW], [False, True], [CLICK_FAILED, []], False, False,
         ["click: " + CLICK_FAILED[0]]),
        ("second_refused", [CLICK, FOLLOW], [True, False], [[], ["auc (overall) = 0.4"]], False,
         False, ["follow: auc (overall) = 0.4"]),
        # TFMA blessed the follow head on AUC 0.0 of a single class: refused here.
        ("not_evaluable_refused", [CLICK, FOLLOW_EMPTY], [True, True], [[], []], False, False,
         ["follow: not evaluable (0 positives in eval); allow_unevaluable_heads is off"]),
        ("not_evaluable_allowed", [CLICK, FOLLOW_EMPTY], [True, True], [[], []], True, True, []),
        # Allowed: the Evaluator's refusal of an AUC that does not exist is ignored...
        ("not_evaluable_allowed_evaluator_refused", [CLICK, FOLLOW_EMPTY], [True, False],
         [[], ["auc (overall) = 0.0000: must be >= 0.55"]], True, True, []),
        # ...but not another head's refusal.
        ("allowed_does_not_hide_a_real_refusal", [CLICK, FOLLOW_EMPTY], [False, True],
         [CLICK_FAILED, []], True, False, ["click: " + CLICK_FAILED[0]]),
        ("single_head", [CLICK], [True], [[]], False, True, []),
    )
    def test_verdict(self, figures, blessed, why, allow, expected_ok, expected_reasons):
        self.assertEqual(decide(figures, blessed, why, allow), (expected_ok, expected_reasons))
