"""The training job: FeatureSpec + model-ready Parquet -> trained model, checkpoints, MLflow run.

Output folder (default ``<work_dir>/train/<model.kind>``)::

    train_state.json      config hash, FeatureSpec hash, MLflow run id (how a resume finds its run)
    checkpoints/          Lightning checkpoints: best-*.ckpt (validation monitor) and last.ckpt
    model/                best weights as a state_dict folder (see training.artifacts)
    config.yaml           the resolved config
    validation_metrics.json, test_metrics.json, gate_heatmap.png

After training, the best checkpoint's predictions are calibrated on the validation split
(:mod:`recsys_moe.training.calibration`); the validation and test metrics and the model folder
are those of the calibrated model (the per-epoch validation during training is uncalibrated).

Running again with the same config resumes from ``checkpoints/last.ckpt`` and continues the
same MLflow run, so a killed run ends with the same number of steps as an uninterrupted one.

Started by ``torchrun`` the job trains with DDP over torchrun's world
(:mod:`recsys_moe.training.distributed`); rank 0 alone writes the folder and the MLflow run.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.strategies import Strategy

from recsys_moe import tracking
from recsys_moe.atomic import replacing
from recsys_moe.config import Config
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.layout import WorkDir
from recsys_moe.metrics import names as metric_names
from recsys_moe.models import build_model
from recsys_moe.training.artifacts import save_model
from recsys_moe.training.calibration import fit_calibration
from recsys_moe.training.checkpoint_io import AtomicCheckpointIO
from recsys_moe.training.datamodule import FeatureDataModule, Loader
from recsys_moe.training.distributed import process_rank, torchrun_world
from recsys_moe.training.gate_diagnostics import GateSummary
from recsys_moe.training.module import MultiTaskModule
from recsys_moe.training.row_audit import RowAudit
from recsys_moe.training.sharding import checkpoint as sharded_ckpt
from recsys_moe.training.sharding.plan import (
    PlanSummary,
    device_memory_bytes,
    shard_decision,
    table_sizes,
)
from recsys_moe.training.sharding.strategy import TorchrecStrategy
from recsys_moe.training.throughput import EpochThroughput

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """The training job cannot start or continue (its message says why and what to do)."""


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    run_id: str | None
    best_checkpoint: str
    global_step: int
    epochs: int
    validation: dict[str, float]
    test: dict[str, float] = field(default_factory=dict)
    gates: dict[str, Any] | None = None
    samples_per_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed: bool = False
    train_drop_rate: dict[str, float] = field(default_factory=dict)
    """Sparse dispatch: per task, the share of chosen pairs dropped in the last training epoch."""
    rank: int = 0
    """The process's global rank: only rank 0's result has the model, metrics and run."""
    data_mode: str = "memory"


def default_paths(cfg: Config) -> dict[str, Path]:
    layout = WorkDir.of(cfg)
    return {"spec": layout.spec_dir, "data": layout.features_dir, "output": layout.train_dir(cfg.model.kind)}


def resolve_precision(cfg: Config) -> str:
    p = cfg.training.precision
    if p != "auto":
        return p
    gpu = cfg.training.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu else "32-true"


@torch.no_grad()
def evaluate(module: MultiTaskModule, loader: Loader, prefix: str) -> tuple[dict[str, float], GateSummary | None]:
    """Metrics of ``module`` on every row of ``loader`` (no trainer needed)."""
    was_training = module.training
    module.eval()
    module.on_validation_epoch_start()
    device = next(module.parameters()).device
    for i, batch in enumerate(loader):
        module.validation_step(batch.to(device), i)
    metrics, summary = module.epoch_metrics(prefix)
    module.train(was_training)
    return metrics, summary


def _prepare_output(out: Path, cfg: Config, spec: FeatureSpec, resume: bool, write: bool = True) -> dict[str, Any]:
    """Return the saved train state to resume, or an empty one for a new run (then, when
    ``write``, the folder is emptied: only rank 0 writes; every rank checks)."""
    state_path = out / "train_state.json"
    if state_path.is_file() and resume:
        state = json.loads(state_path.read_text())
        if state.get("config_hash") != cfg.content_hash() or state.get("spec_hash") != spec.content_hash:
            raise TrainError(
                f"{out} holds a run with another config or FeatureSpec (config {state.get('config_hash')} vs "
                f"{cfg.content_hash()}); pass --fresh to start over there, or --output for another folder"
            )
        return state
    if write:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    return {}


def trainer_world(cfg: Config, sharded: Strategy | None = None) -> dict[str, Any]:
    """The Trainer's accelerator, devices, strategy and nodes: the config's, or under torchrun its
    world (DDP, ``LOCAL_WORLD_SIZE`` devices per node); ``sharded``: that strategy instead of DDP."""
    t = cfg.training
    world = torchrun_world()
    if world is None:
        if sharded is not None:
            if t.strategy == "ddp_spawn" or t.num_nodes > 1 or t.devices not in ("auto", 1):
                raise TrainError("sharded training runs one process per device under torchrun: start it with "
                                 "`torchrun --nproc-per-node N -m recsys_moe.cli train ...` and leave training.devices, "
                                 "num_nodes and strategy at their defaults")
            return {"accelerator": t.accelerator, "devices": 1, "strategy": sharded, "num_nodes": 1}
        return {"accelerator": t.accelerator, "devices": t.devices, "strategy": t.strategy, "num_nodes": t.num_nodes}
    if t.strategy == "ddp_spawn":
        raise TrainError("training.strategy ddp_spawn starts its own processes: run it without torchrun")
    return {"accelerator": t.accelerator, "devices": world.local_world_size, "strategy": sharded or "ddp", "num_nodes": world.nodes}


def sharding_decision(cfg: Config, spec: FeatureSpec) -> tuple[bool, str]:
    """Whether ``training.sharding`` shards this run's tables, and why."""
    if cfg.training.sharding.mode == "none":
        return False, "training.sharding.mode is none"
    world = torchrun_world()
    size, local = (world.world_size, world.local_world_size) if world else (1, 1)
    device = torch.device("cuda") if cfg.training.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else torch.device("cpu")
    tables = table_sizes(build_model(cfg.model, cfg.tasks, spec, embedding_device="meta"))
    memory = device_memory_bytes(cfg.training.sharding, device, local)
    shard, why = shard_decision(cfg.training.sharding, tables, size, memory, cfg.training.embedding_optimizer)
    if shard and device.type == "cpu" and cfg.training.embedding_optimizer == "adam":
        raise TrainError("sharded tables on CPU: FBGEMM's CPU kernels have no fused Adam; set "
                         "training.embedding_optimizer: adagrad (or train on GPUs)")
    return shard, why


def _sharded_strategy(cfg: Config, reason: str, out: Path) -> TorchrecStrategy:
    t = cfg.training

    def report(plan: PlanSummary) -> None:
        print(plan.format(), file=sys.stderr)
        _write_json(out / "sharding_plan.json", plan.to_json())

    return TorchrecStrategy(t.sharding, t.batch_size, t.embedding_optimizer, t.embedding_learning_rate or t.learning_rate,
                            cfg.experiment.seed, reason, on_plan=report)


def _write_json(path: Path, data: Any) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def train(
    cfg: Config,
    spec_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    evaluate_test: bool = True,
    callbacks: Sequence[L.Callback] = (),
    run_tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on the transformed splits; see the module docstring for the outputs.
    ``run_tags`` go onto a new MLflow run (``mlflow.parentRunId`` nests it, as the tuner does)."""
    paths = default_paths(cfg)
    spec = FeatureSpec.load(spec_dir or paths["spec"])
    spec.check_matches(cfg.features)
    out = Path(output_dir or paths["output"])
    rank = process_rank()
    last = out / "checkpoints" / "last.ckpt"
    resumed = resume and last.exists()  # looked at before rank 0 may empty the folder (a sharded one is a folder)
    state = _prepare_output(out, cfg, spec, resume, write=rank == 0)
    resumed = resumed and bool(state)  # a checkpoint without its run's state is not resumed
    L.seed_everything(cfg.experiment.seed, workers=True, verbose=False)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)

    t = cfg.training
    dm = FeatureDataModule(data_dir or paths["data"], spec, t.batch_size, t.eval_batch_size, cfg.experiment.seed,
                           t.data_mode, t.memory_budget_mb, t.shuffle_buffer_rows)
    shard, why = sharding_decision(cfg, spec)
    model = build_model(cfg.model, cfg.tasks, spec, embedding_device="meta" if shard else None)
    module = MultiTaskModule(model, cfg.tasks, cfg.training, cfg.model.gate)
    sharded = _sharded_strategy(cfg, why, out) if shard else None

    run_id = state.get("run_id")
    logger: Any = False
    if cfg.tracking.enabled and rank == 0:
        from lightning.pytorch.loggers import MLFlowLogger

        if run_id is None:
            split = cfg.split
            run_id = tracking.start_run(cfg, tags={
                "git_commit": tracking.git_commit(),
                "config_hash": cfg.content_hash(),
                "feature_spec_hash": spec.content_hash,
                "model_kind": cfg.model.kind,
                "data_source": cfg.data.source,
                "data_window_train": f"{split.train.start}..{split.train.end}",
                "data_window_validation": f"{split.validation.start}..{split.validation.end}",
                "data_window_test": f"{split.test.start}..{split.test.end}",
                **(run_tags or {}),
            }, run_name=f"{cfg.experiment.name}-{cfg.model.kind}")
        logger = MLFlowLogger(experiment_name=tracking.experiment_name(cfg), tracking_uri=tracking.tracking_uri(cfg), run_id=run_id)
    if rank == 0:
        _write_json(out / "train_state.json", {"config_hash": cfg.content_hash(), "spec_hash": spec.content_hash, "run_id": run_id})
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    mode = metric_names.mode(cfg.tasks.monitor)
    monitor = f"val/{cfg.tasks.monitor}"
    ckpt_dir = out / "checkpoints"
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-{epoch:02d}", monitor=monitor, mode=mode,
        save_top_k=1, save_last=True, auto_insert_metric_name=False,
    )
    throughput = EpochThroughput()
    cbs: list[L.Callback] = [checkpoint, throughput, *callbacks]
    if t.audit_rows:
        cbs.append(RowAudit(out / "audit"))
    if cfg.training.early_stopping_patience:
        cbs.append(L.pytorch.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=cfg.training.early_stopping_patience))
    trainer = L.Trainer(
        **trainer_world(cfg, sharded), precision=resolve_precision(cfg), max_epochs=cfg.training.max_epochs,
        gradient_clip_val=cfg.training.gradient_clip_val or None, callbacks=cbs, logger=logger,
        default_root_dir=out, enable_progress_bar=progress, enable_model_summary=False,
        log_every_n_steps=cfg.training.log_every_n_steps, num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()],
    )
    if resumed:
        log.info("resuming from %s", last)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resumed else None)
    seconds = time.perf_counter() - start
    if trainer.interrupted:
        raise TrainError(f"training was interrupted; run the same command again to resume from {last}")
    if trainer.global_rank != 0:  # rank 0 calibrates, evaluates and writes the model
        return TrainResult(output_dir=out, model_dir=out / "model", run_id=run_id, best_checkpoint="", global_step=trainer.global_step,
                           epochs=trainer.current_epoch, validation={}, seconds=seconds, resumed=resumed, rank=trainer.global_rank,
                           data_mode=dm.data_mode)

    best = checkpoint.best_model_path or str(last)
    if sharded is not None:  # the whole model from the shards every rank saved: what export and scoring take
        model = build_model(cfg.model, cfg.tasks, spec)
        module = MultiTaskModule(model, cfg.tasks, cfg.training, cfg.model.gate)
        sharded_ckpt.load_weights(best, module)
    else:
        ckpt = torch.load(best, map_location="cpu", weights_only=True)
        module.load_state_dict(ckpt["state_dict"])
    module.to("cpu")
    calibration = fit_calibration(model, dm.loader("validation", sharded=False))
    validation, gates = evaluate(module, dm.loader("validation", sharded=False), "val/")
    test: dict[str, float] = {}
    if evaluate_test:
        dm.setup("test")
        test, _ = evaluate(module, dm.loader("test", sharded=False), "test/")

    model_dir = save_model(out / "model", model, cfg.model, cfg.tasks, spec, extra={
        "best_checkpoint": Path(best).name, "validation": validation, "mlflow_run_id": run_id, "calibration": calibration,
    })
    _write_json(out / "validation_metrics.json", validation)
    if test:
        _write_json(out / "test_metrics.json", test)
    artifacts: dict[str, Path] = {"config": out / "config.yaml", "feature_spec": model_dir / "feature_spec",
                                  "model": model_dir, "metrics": out / "validation_metrics.json"}
    if test:
        artifacts["metrics/test"] = out / "test_metrics.json"
    if sharded is not None and sharded.plan_summary is not None:
        artifacts["sharding_plan"] = out / "sharding_plan.json"
    if gates is not None:
        gates.warn_collapse()
        artifacts["gates"] = gates.heatmap(out / "gate_heatmap.png", f"{cfg.experiment.name} {cfg.model.kind}: mean gate weight (validation)")
        _write_json(out / "gates.json", gates.to_json())
        artifacts["gates/json"] = out / "gates.json"
    if cfg.tracking.enabled and run_id is not None:
        c = tracking.client(cfg)
        fitted = {f"calibration/{t}/{k}": v for t, maps in calibration.items() for k, v in maps.items()}
        if sharded is not None and sharded.plan_summary is not None:  # tags: a resumed run may have another world
            for t in sharded.plan_summary.tables:
                c.set_tag(run_id, f"sharding/{t.module}/{t.table}", f"{t.sharding_type} ranks {t.ranks}")
        for k, v in {**{f"best/{k}": v for k, v in validation.items()}, **test, **fitted}.items():
            if v == v:  # skip NaN
                c.log_metric(run_id, k, v, step=trainer.global_step)
        tracking.log_artifacts(cfg, run_id, artifacts)
        c.set_terminated(run_id, "FINISHED")
    return TrainResult(
        output_dir=out, model_dir=model_dir, run_id=run_id, best_checkpoint=best, global_step=trainer.global_step,
        epochs=trainer.current_epoch, validation=validation, test=test, gates=gates.to_json() if gates else None,
        samples_per_s=throughput.samples_per_s, seconds=seconds, resumed=resumed, train_drop_rate=module.train_drop_rate,
        data_mode=dm.data_mode,
    )
