"""`recsys-moe tune`: a real Optuna study over real training runs, nested MLflow runs, the best
settings written as a config file; pruning through a real Lightning Trainer."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from recsys_moe.config import load_config
from recsys_moe.tuning.space import scaled_features, suggest, task_table_choices
from recsys_moe.tuning.study import PruneOnValidation
from tests.conftest import one_epoch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_space_samples_valid_configs_of_each_kind(small_features):
    cfg, _ = small_features
    assert task_table_choices(cfg) == {"none": [], "user": ["user"], "item": ["item"], "user+item": ["user", "item"]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        overrides = suggest(trial, cfg)
        seen.add(overrides["model.kind"])
        from recsys_moe.config import apply_overrides, config_from_dict
        from recsys_moe.tuning.space import overrides_to_strings

        trial_cfg = config_from_dict(apply_overrides(cfg.to_dict(), overrides_to_strings(overrides)))
        assert trial_cfg.model.kind == overrides["model.kind"]
        study.tell(trial, 0.5)
    assert seen == {"mmoe", "ple"}
    dims = {f["name"]: f["dim"] for f in scaled_features(cfg, 0.5) if f["kind"] != "numeric"}
    assert dims["user_id"] == 8 and dims["surface"] == 2 and dims["hist_click_items"] == dims["item_id"]


def test_pruning_stops_a_trial_after_its_epoch_and_keeps_its_best_weights(small_features, tmp_path):
    from recsys_moe.training.train import train

    cfg, _ = small_features
    cfg = one_epoch(cfg).model_copy(update={"training": cfg.training.model_copy(update={"max_epochs": 3})})
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # AUC < 2: always prune
    trial = study.ask()
    pruning = PruneOnValidation(trial, "val/ctr/auc")
    result = train(cfg, output_dir=tmp_path / "run", progress=False, evaluate_test=False, callbacks=[pruning])
    assert pruning.pruned_after == 0 and result.epochs == 1
    assert (result.model_dir / "state_dict.pt").is_file()
    frozen = study.trials[0]
    assert list(frozen.intermediate_values) == [0] and 0.4 < frozen.intermediate_values[0] < 1.0


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "recsys_moe.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_tune_runs_a_study_writes_the_best_config_and_nests_trials_in_mlflow(small_features, tmp_path, mlflow_uri):
    cfg, _ = small_features
    base = yaml.safe_load((ROOT / "configs/synthetic.yaml").read_text())
    base["data"]["synthetic"] |= {k: v for k, v in cfg.data.synthetic.model_dump(mode="json").items()}
    base["data"]["raw_dir"] = str(cfg.data.raw_dir)
    base["split"] = cfg.split.model_dump(mode="json")
    base["experiment"]["work_dir"] = str(tmp_path / "work")
    base["training"] |= {"batch_size": 512}
    base["tuning"] = {"max_epochs": 2, "startup_trials": 1}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": mlflow_uri}

    out = tmp_path / "tuned.yaml"
    run = _cli("tune", "-c", str(path), "--trials", "3", "-o", str(out), "--no-progress", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "best config:" in run.stderr and "trial 2:" in run.stderr

    study = optuna.load_study(study_name="synthetic", storage=f"sqlite:///{tmp_path / 'work/tune/synthetic/optuna.db'}")
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 3
    best = study.best_trial
    tuned = load_config(out)
    assert tuned.model.kind == best.params["model.kind"] in ("mmoe", "ple")
    assert tuned.training.learning_rate == pytest.approx(best.params["training.learning_rate"])
    assert tuned.tuning.max_epochs == 2 and tuned.experiment.work_dir == tmp_path / "work"
    assert out.read_text().startswith("# Tuned by `recsys-moe tune`")
    for t in range(3):  # validation only: no trial read the test days
        trial_dir = tmp_path / f"work/tune/synthetic/trials/{t:04d}"
        assert (trial_dir / "validation_metrics.json").is_file() and not (trial_dir / "test_metrics.json").exists()
        assert not (trial_dir / "checkpoints").exists()

    client = MlflowClient(mlflow_uri)
    parent = study.user_attrs["mlflow_run_id"]
    children = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 3 and {c.data.tags["optuna_trial"] for c in children} == {"0", "1", "2"}
    assert client.get_run(parent).data.metrics["best/ctr/auc"] == pytest.approx(best.value)

    again = _cli("tune", "-c", str(path), "--trials", "1", "-o", str(out), "--no-progress", env=env)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="synthetic", storage=study._storage)
    assert len(study.trials) == 4

    # no new trial: the two best are retrained with seeds 43 and 44 and the best mean is written
    confirmed = _cli("tune", "-c", str(path), "--trials", "0", "--confirm", "2", "-o", str(out), "--no-progress", env=env)
    assert confirmed.returncode == 0, confirmed.stderr
    runs = json.loads((tmp_path / "work/tune/synthetic/confirm.json").read_text())
    top2 = sorted((t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"), key=lambda t: -t.value)[:2]
    assert sorted(runs) == sorted(str(t.number) for t in top2) and all(sorted(v) == ["43", "44"] for v in runs.values())
    means = {int(n): (t.value + sum(runs[n].values())) / 3 for n in runs for t in top2 if str(t.number) == n}
    winner = max(means, key=means.get)
    assert "mean over 3 seeds" in out.read_text().splitlines()[1] and f"trial {winner} is" in out.read_text()
    assert load_config(out).training.learning_rate == pytest.approx(study.trials[winner].params["training.learning_rate"])

    base["model"] = {"num_experts": 3}  # another base config: the study refuses it
    path.write_text(yaml.safe_dump(base))
    other = _cli("tune", "-c", str(path), "--trials", "1", "--no-progress", env=env)
    assert other.returncode == 2 and "another base config" in other.stderr
    assert json.loads(json.dumps(best.user_attrs["overrides"]))["model.kind"] == tuned.model.kind


def test_a_study_needs_a_limit(small_features):
    from recsys_moe.tuning import TuneError, tune

    cfg, _ = small_features
    with pytest.raises(TuneError, match="--trials, --timeout"):
        tune(cfg, {}, trials=None, timeout=None)
