"""format_summary on a hand-built RunSummary: early stopping, not-evaluable
tasks and the gate's per-head lines (the e2e test checks it on a real run)."""

from pipelines.mlmd_summary import (ArtifactInfo, ExecutionInfo, RunSummary, early_stopping_text,
                                    format_summary)


def _execution(node: str, outputs: dict[str, dict]) -> ExecutionInfo:
    return ExecutionInfo(1, node, "COMPLETE", {}, {
        key: [ArtifactInfo(1, "T", f"/a/{node}/{key}", props)] for key, props in outputs.items()})


def test_early_stopping_text():
    assert early_stopping_text({"best_epoch": 2, "epochs_run": 3, "stopped_early": 1,
                                "early_stopping_monitor": "click_auc"}) == \
        "best epoch 2 of 3 (stopped early, monitor click_auc)"
    assert early_stopping_text({"best_epoch": 3, "epochs_run": 3, "stopped_early": 0}) == \
        "best epoch 3 of 3"
    assert early_stopping_text({"click_auc": 0.6}) == ""  # written before early stopping
    assert early_stopping_text({"best_epoch": 3, "epochs_run": 4, "stopped_early": 1,
                                "learning_rate": 0.001, "learning_rates_tried": 3}) == \
        "best epoch 3 of 4 (stopped early, learning rate 0.001 chosen of 3)"


def test_format_summary_trainers_and_gate():
    trainer = _execution("RankingTrainer.multitask_nfwfm", {"metrics": {
        "click_auc": 0.61234, "click_eval_positives": 40, "click_eval_examples": 500,
        "follow_eval_positives": 0, "follow_eval_examples": 500,
        "best_epoch": 2, "epochs_run": 3, "stopped_early": 1,
        "early_stopping_monitor": "mean_click_follow_auc"}})
    old_trainer = _execution("RankingTrainer.nfm", {"metrics": {"click_auc": 0.6}})
    gate = _execution("RankingGate.multitask_nfwfm", {"blessing": {
        "blessed": 0, "heads": "click,follow",
        "reason": "follow: not evaluable (0 positives in eval); allow_unevaluable_heads is off",
        "click_summary": "click: candidate AUC 0.6123 vs baseline 0.6000, diff +0.0123 "
                         "(95% CI +0.0010 to +0.0236), tolerance 0.001",
        "follow_summary": "follow: not evaluable (0 positives in eval)"}})
    text = format_summary(RunSummary("r1", {e.node_id: e for e in (trainer, old_trainer, gate)}))
    lines = text.splitlines()
    assert ("  RankingTrainer.multitask_nfwfm: {'click_auc': 0.6123}; follow: not evaluable "
            "(0 positives in eval); best epoch 2 of 3 (stopped early, monitor "
            "mean_click_follow_auc)") in lines
    assert "  RankingTrainer.nfm: {'click_auc': 0.6}" in lines
    start = lines.index("  RankingGate.multitask_nfwfm: NOT BLESSED (follow: not evaluable "
                        "(0 positives in eval); allow_unevaluable_heads is off)")
    assert lines[start + 1:start + 3] == [
        "    click: candidate AUC 0.6123 vs baseline 0.6000, diff +0.0123 "
        "(95% CI +0.0010 to +0.0236), tolerance 0.001",
        "    follow: not evaluable (0 positives in eval)"]
