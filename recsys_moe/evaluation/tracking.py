"""An evaluation's numbers and reports, logged to MLflow as a run of its own."""

from __future__ import annotations

import time

from recsys_moe import tracking
from recsys_moe.config import Config
from recsys_moe.evaluation.evaluate import EvalResult


def log_evaluation(cfg: Config, result: EvalResult) -> str:
    """A run of its own per evaluation (tag ``job=evaluate``), so evaluating an old champion never
    changes that champion's training run; metrics are ``<split>/<task>/<metric>``. Returns the
    run id (also set on ``result.run_id``)."""
    from mlflow.entities import Metric

    split, m = result.split, result.metrics
    c = tracking.client(cfg)
    run = c.create_run(tracking.experiment_id(cfg), run_name=f"evaluate-{split}", tags={
        "job": "evaluate", "model": m["model"], "split": split, "feature_spec_hash": m["spec_hash"],
        "training_run_id": m.get("training_run_id") or "", "git_commit": tracking.git_commit(),
        "quality_gates": "failed" if result.failed_gates else "passed",
    })
    now = int(time.time() * 1000)
    metrics = [Metric(f"{split}/{k}", v, now, 0) for k, v in result.headline.items() if v == v]
    for i in range(0, len(metrics), 500):
        c.log_batch(run.info.run_id, metrics=metrics[i: i + 500])
    c.log_artifacts(run.info.run_id, str(result.output), "evaluation")
    c.set_terminated(run.info.run_id, "FINISHED")  # the job ran; the gate verdict is the tag
    result.run_id = run.info.run_id
    return run.info.run_id
