"""Experiment configuration: pydantic models for every section, loaded from one YAML file.

One YAML file per experiment lives under ``configs/``. Command-line overrides use dotted paths
(``--set data.synthetic.num_impressions=1000000``); their values are parsed as YAML scalars, so
``8`` is an int, ``0.5`` a float and ``[1, 2]`` a list. Unknown keys and bad values fail with a
:class:`ConfigError` that names the file and the dotted key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsys_moe import contract
from recsys_moe.metrics import names as metric_names


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]


class SyntheticConfig(_Section):
    """Parameters of the embedded synthetic feed (see :mod:`recsys_moe.data.synthetic`)."""

    num_users: PositiveInt = 20_000
    num_items: PositiveInt = 10_000
    num_impressions: PositiveInt = 1_000_000
    start_date: dt.date = dt.date(2024, 1, 1)
    num_days: PositiveInt = 14
    latent_dim: PositiveInt = 16
    num_categories: PositiveInt = 30
    num_creators: PositiveInt = 2_000
    num_tags: PositiveInt = 200
    slots_per_page: PositiveInt = 10
    click_rate: Probability = 0.2
    watch_zero_share: Probability = 0.35
    task_correlation: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.5
    """Pearson correlation of the click and watch-time latent affinities (MMoE paper, sec. 3)."""
    affinity_scale: Annotated[float, Field(gt=0.0)] = 1.5
    """Weight of the user-item affinity in the click logit: higher means a more learnable task."""
    position_bias: Annotated[float, Field(ge=0.0)] = 0.6
    """Click logit penalty per log2(1 + slot)."""
    position_from_relevance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """The logging ranker's say in the slot: 0 puts every impression in a random slot; above 0
    the slot follows a score correlated this much with the impression's position-free click
    logit, the rest of it the ranker's own taste for each item (unrelated to relevance) and
    noise, as in a ranked feed's logs: items the old ranker favoured sit higher and collect
    clicks for it. Each slot still holds the same share of impressions."""
    watch_sigma: Annotated[float, Field(gt=0.0)] = 0.8
    """Standard deviation of log watch time given a non-zero watch (heavy tail)."""
    chunk_rows: PositiveInt = 500_000
    """Impressions generated and written per part file; bounds memory."""


class KuaiRandLog(_Section):
    """One of KuaiRand's logs, and the calendar days of it to read (Asia/Shanghai, both ends
    included; null: all of them)."""

    kind: Literal["standard", "random"] = "standard"
    start: dt.date | None = None
    end: dt.date | None = None

    @model_validator(mode="after")
    def _order(self) -> KuaiRandLog:
        if self.start and self.end and self.end < self.start:
            raise ValueError(f"log days end ({self.end}) before they start ({self.start})")
        return self


class KuaiRandConfig(_Section):
    """Where the KuaiRand files are and which of them to read (:mod:`recsys_moe.data.kuairand`).

    ``layout: cut`` is this project's shared cut (``../shared/data/kuairand/README.md``);
    ``official`` the files as released for KuaiRand-Pure, -1K and -27K (``variant``); ``auto``
    picks by the files present."""

    path: str = "../shared/data/kuairand"
    layout: Literal["auto", "cut", "official"] = "auto"
    variant: Literal["pure", "1k", "27k"] = "pure"
    logs: list[KuaiRandLog] = [KuaiRandLog()]
    """The logs read into impressions, each with its days: e.g. the standard log for training
    and the random-exposure log (unbiased) for a test window. Rows of several logs are merged in
    time order; an ``is_rand`` column says which log a row came from."""

    @model_validator(mode="after")
    def _check(self) -> KuaiRandConfig:
        if not self.logs:
            raise ValueError("data.kuairand.logs: name at least one log")
        kinds = [log.kind for log in self.logs]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"data.kuairand.logs: each log once, got {kinds}")
        return self


TIME_UNITS = ("s", "ms", "us", "ns")


class TableFiles(_Section):
    """One table of ``data.source: files``: where its files are and how its columns are named.

    ``path`` is a file, a folder (every ``.parquet``/``.csv`` file below it; for Parquet, Hive
    ``key=value`` folders are read as columns) or a glob, local or on an object store (``s3://``, ``gs://``,
    ``abfs://``)."""

    path: str
    format: Literal["auto", "parquet", "csv"] = "auto"
    """auto: by the files' extension (``.csv``, ``.tsv``, gzipped or not, are CSV)."""
    separator: Annotated[str, Field(min_length=1, max_length=1)] = ","
    """CSV field separator."""
    columns: dict[str, str] = {}
    """Raw column -> the column's name in these files, for every name that differs
    (``{user_id: uid, click: is_click}``); columns not named keep their own names."""


class ImpressionFiles(TableFiles):
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "ms"
    """Unit of an integer timestamp (epoch, UTC); a string column is parsed as ISO 8601, a
    datetime column is used as it is."""
    time_zone: str = "UTC"
    """Zone whose calendar days the split windows count (``Asia/Shanghai``, ``America/New_York``);
    naive datetimes and strings without an offset are read as wall-clock time there."""
    watch_time_unit: Literal["s", "ms"] = "s"


class ItemFiles(TableFiles):
    duration_unit: Literal["s", "ms"] = "s"
    list_separator: Annotated[str, Field(min_length=1)] = ","
    """Separator of ``tags`` when they are given as a string (``"12,7,40"``)."""


class FilesConfig(_Section):
    """``data.source: files``: your own logs (:mod:`recsys_moe.data.files`)."""

    impressions: ImpressionFiles
    users: TableFiles
    items: ItemFiles
    history: TableFiles | None = None
    """Optional per-user history from before the log (``user_id``, ``click_items``,
    ``long_watch_items``: lists of item ids, oldest first)."""


class DataConfig(_Section):
    source: Literal["synthetic", "kuairand", "files"] = "synthetic"
    raw_dir: Path = Path("data/synthetic/raw")
    """Where `data synth` writes raw tables, and where synthetic raw tables are read from."""
    synthetic: SyntheticConfig = SyntheticConfig()
    kuairand: KuaiRandConfig = KuaiRandConfig()
    files: FilesConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source == "files" and self.files is None:
            raise ValueError("data.files: required when data.source is files (impressions, users, items)")
        return self


Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
# nn.ModuleDict attributes: a torchrec table named like one of these cannot be registered.
RESERVED_TABLE_NAMES = {"items", "keys", "values", "update", "pop", "clear", "forward", "training"}


class FeatureDef(_Section):
    """One model input. ``source`` is a column of the enriched impression frame: an impressions,
    users or items column, a derived column (``hour``, ``weekday``) or a point-in-time column
    (see :data:`recsys_moe.features.enrich.POINT_IN_TIME_COLUMNS`)."""

    name: Identifier
    kind: Literal["id", "id_list", "numeric"]
    source: str
    table: Identifier | None = None
    """Embedding table (ids and lists); features naming the same table share it. Default: name."""
    dim: PositiveInt = 16
    min_count: PositiveInt = 1
    max_vocab: PositiveInt | None = None
    hash_buckets: Annotated[int, Field(ge=0)] = 0
    """Integer ids outside the vocabulary go to ``id % hash_buckets`` buckets instead of OOV."""
    pooling: Literal["sum", "mean"] = "mean"
    max_len: PositiveInt = 20
    transform: list[Literal["log1p", "standardize"]] = []
    clip: tuple[float, float] | None = None
    default: float = 0.0
    missing_indicator: bool = False

    @property
    def table_name(self) -> str:
        return self.table or self.name

    @model_validator(mode="after")
    def _check_kind(self) -> FeatureDef:
        if self.kind == "numeric" and (self.table or self.hash_buckets or self.max_vocab):
            raise ValueError(f"feature {self.name!r}: table/hash_buckets/max_vocab apply to ids, not numeric")
        if self.kind != "numeric" and (self.transform or self.clip or self.missing_indicator):
            raise ValueError(f"feature {self.name!r}: transform/clip/missing_indicator apply to numeric features")
        if self.clip and self.clip[0] >= self.clip[1]:
            raise ValueError(f"feature {self.name!r}: clip lower bound must be below upper bound")
        return self


class HistoryConfig(_Section):
    """Point-in-time user history and counters (computed only from strictly earlier impressions)."""

    max_len: PositiveInt = 20
    long_watch_s: Annotated[float, Field(gt=0)] = 20.0
    """An impression with watch_time_s >= this is a long watch."""


class FeaturesConfig(_Section):
    history: HistoryConfig = HistoryConfig()
    chunk_rows: PositiveInt = 49_152
    """Rows replayed at a time (a day is split at timestamp changes); bounds transform memory.
    Smaller slices hold peak memory flatter as the log grows (a long log's users have full
    history lists, so its slices weigh more) and cost speed; ``benchmarks/bench_features.py``
    measures the trade-off (docs/benchmarks.md)."""
    features: list[FeatureDef] = []

    @model_validator(mode="after")
    def _check_features(self) -> FeaturesConfig:
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature names: {dup}")
        clash = sorted(set(names) & contract.RESERVED_COLUMNS)
        if clash:
            raise ValueError(f"feature names {clash} are reserved for output columns")
        dims: dict[str, int] = {}
        for f in self.features:
            if f.kind == "numeric":
                continue
            if f.table_name in RESERVED_TABLE_NAMES:
                raise ValueError(f"feature {f.name!r}: table name {f.table_name!r} is reserved (nn.ModuleDict attribute)")
            if dims.setdefault(f.table_name, f.dim) != f.dim:
                raise ValueError(f"table {f.table_name!r}: features disagree on dim ({dims[f.table_name]} vs {f.dim})")
        return self

    def content_hash(self) -> str:
        """Hash of what determines feature values (``chunk_rows`` only changes how they are computed)."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"chunk_rows"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class Window(_Section):
    """Calendar days, both ends included, in the timestamp's own time zone."""

    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.end < self.start:
            raise ValueError(f"window ends ({self.end}) before it starts ({self.start})")
        return self


class SplitConfig(_Section):
    """Time-based split: train, then validation, then test, never overlapping (no random splits)."""

    train: Window = Window(start=dt.date(2024, 1, 1), end=dt.date(2024, 1, 10))
    validation: Window = Window(start=dt.date(2024, 1, 11), end=dt.date(2024, 1, 12))
    test: Window = Window(start=dt.date(2024, 1, 13), end=dt.date(2024, 1, 14))

    @model_validator(mode="after")
    def _order(self) -> SplitConfig:
        if not (self.train.end < self.validation.start and self.validation.end < self.test.start):
            raise ValueError("split windows must be ordered train < validation < test without overlap")
        return self

    def windows(self) -> dict[str, Window]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class GateConfig(_Section):
    """Per-task gates over the shared experts (Ma et al., KDD 2018, MMoE).

    ``top_k`` turns on noisy top-k sparse gating (Shazeer et al., ICLR 2017): 1 routes each row to
    one expert as in Switch (Fedus et al., 2021), 2 as in GLaM (Du et al., 2022). ``balance_weight``
    scales the Switch-style load-balancing loss (applies to sparse gates only)."""

    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    top_k: PositiveInt | None = None
    noise: bool = True
    """Trainable Gaussian noise on the gate logits while training (top-k gates only)."""
    dispatch: Literal["auto", "dense", "sparse"] = "auto"
    """How experts run under a top-k gate. ``sparse``: each expert only on the rows a task chose
    it for (conditional computation, :mod:`recsys_moe.modules.dispatch`); ``dense``: every
    expert on every row, mixed by the gate weights; ``auto``: sparse when its buffers hold at most
    half the rows of the dense computation (``2 * capacity_factor * tasks * top_k <= num_experts``),
    where the routing's own cost pays off (benchmarks/bench_experts.py). Softmax gates run dense."""
    capacity_factor: Annotated[float, Field(gt=0.0)] = 1.25
    """Sparse dispatch while training: an expert takes at most this many times an even share of
    the (row, expert) pairs the tasks can route; the overflow is dropped (Switch uses 1.0-1.25)."""
    eval_capacity_factor: Annotated[float, Field(gt=0.0)] | None = None
    """The same in evaluation, export and scoring. Null: the busiest expert's load in the batch,
    so nothing is dropped and a row's prediction never depends on its batch; a number bounds the
    buffers' memory at the cost of batch-dependent drops."""
    z_loss_weight: Annotated[float, Field(ge=0.0)] = 0.0
    """Weight of the router z-loss (ST-MoE, Zoph et al., 2022; they use 1e-3); 0 turns it off."""
    balance_weight: Annotated[float, Field(ge=0.0)] = 0.01
    collapse_threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Warn when an expert's mean gate weight is below this for every task (collapse)."""


class PLEConfig(_Section):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): per level, ``task_experts``
    experts per task and ``shared_experts`` shared ones; ``levels: 1`` is CGC."""

    shared_experts: Annotated[int, Field(ge=0)] = 2
    task_experts: Annotated[int, Field(ge=0)] = 2
    levels: PositiveInt = 1

    @model_validator(mode="after")
    def _check(self) -> PLEConfig:
        if self.shared_experts + self.task_experts < 1:
            raise ValueError("model.ple: shared_experts + task_experts must be at least 1")
        return self


class PositionTowerConfig(_Section):
    """A shallow tower on the slot features (YouTube, Zhao et al., RecSys 2019): its logit is
    added to ``task``'s logit in training and replaced by a learned unknown-slot constant when
    evaluating and scoring. The ``features`` it reads (id features, e.g. ``position``,
    ``surface``) leave the main model's input."""

    features: list[Identifier]
    task: Identifier = "ctr"
    hidden: list[PositiveInt] = [8]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Share of training rows whose slot is hidden (the tower's output replaced by the constant)."""

    @model_validator(mode="after")
    def _check(self) -> PositionTowerConfig:
        if not self.features:
            raise ValueError("model.position_tower.features: name at least one id feature (e.g. position)")
        return self


class ModelConfig(_Section):
    """Architecture. ``kind``: ``mmoe`` (shared experts, one gate per task), ``ple`` (shared and
    task-specific experts, ``model.ple``), ``shared_bottom`` (one shared MLP, Caruana 1997) or
    ``single_task`` (an independent model per task)."""

    kind: Literal["mmoe", "ple", "shared_bottom", "single_task"] = "mmoe"
    num_experts: PositiveInt = 4
    """MMoE's shared experts (PLE counts its own in ``model.ple``)."""
    expert_hidden: list[PositiveInt] = [64]
    """Hidden sizes of each expert (MMoE, PLE) or of the shared bottom / single-task bottoms."""
    expert_activation: Literal["relu", "swish"] = "relu"
    """Experts' activation; ``swish`` with ``expert_norm`` is HoME's remedy for collapsed experts
    (Wang et al., Kuaishou 2024)."""
    expert_norm: Literal["none", "layer", "batch"] = "none"
    """Normalise each expert's output before the gates mix them (HoME): ``layer`` (per row) or
    ``batch`` (per expert and unit over the batch; dense dispatch only)."""
    tower_hidden: list[PositiveInt] = [32]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    embedding_init_std: Annotated[float, Field(gt=0.0)] | None = 0.1
    """Embedding tables start from N(0, std^2); null keeps torchrec's default init."""
    interaction: Literal["dot", "none"] = "dot"
    """``dot``: add pairwise dot products of same-width pooled embeddings to the dense input
    (DLRM, Naumov et al., 2019); ``none``: concatenation only (as torch-rechub's MMoE)."""
    task_tables: list[Identifier] = []
    """STEM (Su et al., AAAI 2024): embedding tables that each task also gets a copy of. A task's
    gate and tower read the shared embeddings plus its own copies (and their dot products), and
    only that task's loss trains them. Empty: every table is shared."""
    task_tables_cross: bool = False
    """With ``task_tables``: each task's gate and tower also read the other tasks' own embeddings,
    detached from their gradient (STEM's all-forward, task-specific-backward), so a task learns
    from what the others' tables know without training them."""
    ple: PLEConfig = PLEConfig()
    position_tower: PositionTowerConfig | None = None
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        k = self.gate.top_k
        if k is not None and k > self.num_experts:
            raise ValueError(f"model.gate.top_k ({k}) must not exceed model.num_experts ({self.num_experts})")
        if self.gate.dispatch == "sparse" and k is None:
            raise ValueError("model.gate.dispatch: sparse dispatch needs a top-k gate (set model.gate.top_k)")
        if k is not None and self.kind == "ple":
            raise ValueError("model.gate.top_k: PLE's gates are softmax gates over few experts; top-k gating is for kind mmoe")
        if not self.expert_hidden:
            raise ValueError("model.expert_hidden needs at least one layer")
        if self.task_tables and self.kind == "single_task":
            raise ValueError("model.task_tables: single_task already gives every task its own tables")
        if len(set(self.task_tables)) != len(self.task_tables):
            raise ValueError(f"model.task_tables: duplicate table names {self.task_tables}")
        return self


class TaskConfig(_Section):
    """One prediction task. ``kind`` ``binary`` predicts the ``click`` label; ``watch_time``
    predicts ``watch_time_s`` with one of the losses in :mod:`recsys_moe.tasks` (default
    ``log1p_mse``)."""

    name: Identifier
    kind: Literal["binary", "watch_time"]
    loss: Literal["bce", "log1p_mse", "weighted_logistic", "ziln"] | None = None
    weight: Annotated[float, Field(gt=0.0)] = 1.0
    calibrate: bool = True
    """After training, fit a monotone map of the prediction on the validation split
    (:mod:`recsys_moe.training.calibration`): Platt scaling of a click logit; for watch time a
    scale of the seconds, so that ``pred_<task>`` estimates expected seconds (with ``log1p_mse``,
    ``expm1(output)`` alone is a geometric mean, far under the mean of heavy-tailed seconds)."""

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        allowed = {"binary": ("bce",), "watch_time": ("log1p_mse", "weighted_logistic", "ziln")}[self.kind]
        if self.loss is not None and self.loss not in allowed:
            raise ValueError(f"task {self.name!r}: loss {self.loss!r} does not fit kind {self.kind!r} (use one of {list(allowed)})")
        return self

    @property
    def label_column(self) -> str:
        return contract.label_column(self.kind)

    @property
    def loss_name(self) -> str:
        return self.loss or ("bce" if self.kind == "binary" else "log1p_mse")


def _default_tasks() -> list[TaskConfig]:
    return [TaskConfig(name="ctr", kind="binary"), TaskConfig(name="watch_time", kind="watch_time")]


class TasksConfig(_Section):
    tasks: list[TaskConfig] = Field(default_factory=_default_tasks)
    weighting: Literal["fixed", "uncertainty"] = "fixed"
    """``fixed``: sum of weight * loss. ``uncertainty``: learned per-task log-variances
    (Kendall, Gal & Cipolla, CVPR 2018) on top of the fixed weights."""
    monitor: str = "ctr/auc"
    """Validation metric (``<task>/<metric>`` or ``loss``, see :mod:`recsys_moe.metrics.names`)
    that picks the best checkpoint and drives early stopping."""

    @model_validator(mode="after")
    def _check(self) -> TasksConfig:
        names = [t.name for t in self.tasks]
        if not names:
            raise ValueError("tasks.tasks: at least one task is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks.tasks: duplicate task names {names}")
        allowed = metric_names.validation_keys(self.kinds)
        if self.monitor not in allowed:
            raise ValueError(metric_names.unknown_metric_message(self.monitor, allowed, "tasks.monitor"))
        return self

    @property
    def kinds(self) -> dict[str, str]:
        """Task name -> kind, in task order."""
        return {t.name: t.kind for t in self.tasks}


class ShardingConfig(_Section):
    """Embedding tables sharded over the ranks by torchrec's ``DistributedModelParallel``
    (:mod:`recsys_moe.training.sharding`). ``mode``: ``none`` replicates every table on every rank
    (DDP); ``always`` shards (also in one process, so a sharded checkpoint can be resumed there);
    ``auto`` shards when more than one process trains and a table, with its optimiser state,
    is larger than ``table_budget_mb``."""

    mode: Literal["none", "auto", "always"] = "none"
    table_budget_mb: PositiveInt | None = None
    """``auto``'s threshold; null: a quarter of one device's memory (GPU) or of the host memory
    per process (CPU)."""
    sharding_types: list[Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"]] | None = None
    """The types the planner may pick for every table (null: any it offers for the device;
    ``row_wise`` and its kin need a GPU)."""
    tables: dict[str, list[Literal["table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"]]] = {}
    """Per table name, the types allowed for it (over ``sharding_types``)."""
    device_memory_gb: Annotated[float, Field(gt=0.0)] | None = None
    """The planner's memory per device; null: the GPU's, or the host's per process on CPU."""


class TrainingConfig(_Section):
    """Lightning Trainer and optimiser settings. ``precision: auto`` is bf16-mixed on CUDA, fp32 on CPU."""

    batch_size: PositiveInt = 2048
    eval_batch_size: PositiveInt = 8192
    max_epochs: PositiveInt = 5
    learning_rate: Annotated[float, Field(gt=0.0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    """Applied to dense layers only, never to embedding tables."""
    embedding_optimizer: Literal["adagrad", "adam"] = "adagrad"
    """Optimiser of the embedding tables (dense layers use Adam); see training/optim.py."""
    embedding_learning_rate: Annotated[float, Field(gt=0.0)] | None = 0.05
    """Null: same as ``learning_rate``."""
    gradient_clip_val: Annotated[float, Field(ge=0.0)] = 1.0
    early_stopping_patience: Annotated[int, Field(ge=0)] = 2
    """Validation epochs without improvement before stopping; 0 turns early stopping off."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    num_nodes: PositiveInt = 1
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    log_every_n_steps: PositiveInt = 50
    num_threads: Annotated[int, Field(ge=0)] = 0
    """torch intra-op threads; 0 keeps torch's default (one per core)."""
    data_mode: Literal["auto", "memory", "stream"] = "auto"
    """How training reads the model-ready splits: ``memory`` holds them as tensors (fastest for
    small data), ``stream`` reads row groups as it goes (memory flat in the data's size); ``auto``
    holds them when their size as Arrow arrays (estimated from the Parquet footers) is at most
    ``memory_budget_mb``."""
    memory_budget_mb: PositiveInt = 2048
    shuffle_buffer_rows: PositiveInt = 262_144
    """Streaming: rows shuffled together (plus one row group); row groups are shuffled too."""
    audit_rows: bool = False
    """Write the ``impression_id`` of every training row each rank saw, per epoch, to
    ``<run>/audit/epoch=<e>/rank=<r>.parquet`` (to check a distributed run's coverage)."""
    sharding: ShardingConfig = ShardingConfig()


class TrackingConfig(_Section):
    """MLflow. ``tracking_uri`` null: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db``
    in the current (project) directory."""

    tracking_uri: str | None = None
    experiment_name: str | None = None
    """Default: the experiment name."""
    registered_model_name: str | None = None
    """Default: ``recsys-moe-<experiment name>``."""
    enabled: bool = True


class QualityGate(_Section):
    """``metric`` is ``<task>/<metric>`` or ``ranking/ndcg_at_<k>``; give ``min``, ``max`` or both."""

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> QualityGate:
        if self.min is None and self.max is None:
            raise ValueError(f"quality gate {self.metric!r}: give min, max or both")
        return self


class ExportConfig(_Section):
    """The export (``recsys-moe export`` and the pipeline's export step): smaller serving copies
    and the quality gate they must pass against the float32 export on the validation split."""

    parity_rows: PositiveInt = 10_000
    """Held-out rows on which ONNX Runtime must match torch within 1e-5."""
    fp16: bool = False
    """Also write ``model.fp16.onnx`` for GPU serving (parity within 2e-3)."""
    int8: bool = False
    """Also write ``model.int8.onnx``: INT8 embedding tables, if it passes the gate."""
    int8_scales: Literal["row", "table"] = "row"
    """INT8 scale granularity: one per ``row`` (accurate for rows on very different scales, as
    FBGEMM's tables; a per-row multiply at lookup) or one per ``table`` (cheaper lookups)."""
    prune_experts: bool = False
    """Leave out the experts whose mean gate weight on the validation split is under
    ``prune_threshold`` for every task, if the pruned model passes the gate."""
    prune_threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.01
    max_auc_drop: Annotated[float, Field(ge=0.0)] = 0.001
    """Quality gate: largest CTR AUC drop allowed against the float32 export."""
    max_spearman_drop: Annotated[float, Field(ge=0.0)] = 0.002
    """Quality gate: largest watch-time Spearman drop allowed against the float32 export."""
    gate_rows: PositiveInt = 200_000
    """Validation rows the quality gate and the expert usage are measured on (the first ones)."""


class EvaluationConfig(_Section):
    """The offline evaluation job (``recsys-moe evaluate``)."""

    split: Literal["train", "validation", "test"] = "test"
    score_exponents: dict[str, float] = {"ctr": 1.0, "watch_time": 1.0}
    """Combined ranking score ``prod_t prediction_t ** exponent_t`` (e.g. p_ctr * E[watch])."""
    ndcg_k: list[PositiveInt] = [5, 10]
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 10
    xauc_max_pairs: PositiveInt = 2_000_000
    """Within-user pairs for XAUC: all of them up to this many, else this many sampled."""
    bootstrap_samples: Annotated[int, Field(ge=10)] = 200
    confidence: Probability = 0.95
    user_activity_edges: list[PositiveInt] = [1, 10, 50, 200]
    """Segment users by train-window impressions: [0, 1) is cold, then [1, 10), ... , >= 200."""
    item_popularity_edges: list[PositiveInt] = [1, 10, 100, 1000]
    gates: list[QualityGate] = []
    fail_on_collapse: bool = False
    """Treat an expert collapse (see model.gate.collapse_threshold) as a failed gate."""

    @model_validator(mode="after")
    def _check(self) -> EvaluationConfig:
        for name in ("user_activity_edges", "item_popularity_edges"):
            edges = getattr(self, name)
            if edges != sorted(set(edges)):
                raise ValueError(f"evaluation.{name}: edges must be strictly increasing, got {edges}")
        return self


class PromotionConfig(_Section):
    """When a challenger replaces the champion: it passes every quality gate and beats the
    champion on ``metric`` (measured on the same test rows) by more than ``margin``."""

    metric: str = "ctr/auc"
    margin: Annotated[float, Field(ge=0.0)] = 0.0
    require_significant: bool = False
    """Also require the bootstrap interval of the AUC delta to exclude 0 (AUC metrics only)."""

    @property
    def higher_is_better(self) -> bool:
        return bool(metric_names.higher_is_better(self.metric))


class RayScoringConfig(_Section):
    """``scoring.engine: ray``: Ray Data streams the input through two pools of actors, one that
    computes model inputs (users, items and history state loaded once per actor) and one that
    holds an ONNX Runtime session and writes the parts."""

    address: str | None = None
    """Null: a Ray instance started inside the job on this machine; ``auto`` or
    ``ray://<head>:10001``: a running cluster (``ray start --head``)."""
    feature_actors: PositiveInt = 1
    scoring_actors: PositiveInt = 1
    num_cpus: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs reserved per actor (both pools); also the ONNX Runtime threads of a CPU scoring actor."""
    num_gpus: Annotated[float, Field(ge=0.0)] = 0.0
    """GPUs per scoring actor (1: one session per GPU; Ray sets ``CUDA_VISIBLE_DEVICES``)."""


class RayTransformConfig(_Section):
    address: str | None = None
    """Null: a Ray instance started inside the job; ``auto`` or ``ray://<head>:10001``: a cluster."""
    num_cpus: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs reserved per task."""


class TransformConfig(_Section):
    """``recsys-moe features transform``: ``engine`` local (one process) or ray (the replay split
    by user and by item hash into ``partitions`` Ray tasks each, then one task per day;
    recsys_moe/features/ray_transform.py). The output is the same either way."""

    engine: Literal["local", "ray"] = "local"
    partitions: PositiveInt = 4
    ray: RayTransformConfig = RayTransformConfig()


ENGINE_SECTIONS = ("transform", "scoring")
"""Config sections that choose where a job runs, not what it computes."""


class ScoringConfig(_Section):
    """``recsys-moe score``: ``engine`` local (this process) or ray (``scoring.ray``)."""

    engine: Literal["local", "ray"] = "local"
    ray: RayScoringConfig = RayScoringConfig()


class PipelineConfig(_Section):
    """The scheduled pipeline (``recsys-moe pipeline run``)."""

    promotion: PromotionConfig = PromotionConfig()
    candidates: str | None = None
    """Raw-shaped Parquet (file, directory or glob) the champion scores at the end of a run.
    Null: the as-of day's impressions from the configured source."""
    output_dir: Path | None = None
    """Default: ``<work_dir>/pipeline``; each run writes ``<as-of>_<config hash>/`` below it."""


class TuningConfig(_Section):
    """``recsys-moe tune``: an Optuna study (TPE sampler, median pruner) over the model,
    optimiser, dropout, embedding and gate settings (:mod:`recsys_moe.tuning.space`), scored on
    the validation split only."""

    metric: str | None = None
    """Validation metric to optimise (``<task>/<metric>``); null: ``tasks.monitor``."""
    model_kinds: list[Literal["mmoe", "ple", "shared_bottom", "single_task"]] = ["mmoe", "ple"]
    """The kinds a trial may pick."""
    embedding_dims: bool = True
    """Also sample a scale (0.5x, 1x, 2x) of every table's dim; each distinct scale fits and
    transforms the features once (cached in the study folder)."""
    max_epochs: PositiveInt | None = None
    """Epochs per trial (early stopping still applies); null: ``training.max_epochs``."""
    startup_trials: Annotated[int, Field(ge=0)] = 8
    """Random trials before TPE models the space, and trials before the pruner may stop one."""
    pruning_warmup_epochs: Annotated[int, Field(ge=0)] = 1
    """Epochs every trial runs before the median pruner may stop it."""
    confirm_seeds: Annotated[int, Field(ge=2)] = 3
    """With ``tune --confirm K``: seeds each of the K best trials is judged on (its own and
    ``experiment.seed + 1, + 2, ...``); the best mean validation metric wins."""
    study_name: str | None = None
    """Default: the experiment name. The study lives in ``<work_dir>/tune/<study>/optuna.db``,
    so running ``tune`` again adds trials to it."""

    @model_validator(mode="after")
    def _check(self) -> TuningConfig:
        if not self.model_kinds:
            raise ValueError("tuning.model_kinds: name at least one model kind")
        if len(set(self.model_kinds)) != len(self.model_kinds):
            raise ValueError(f"tuning.model_kinds: duplicates in {self.model_kinds}")
        return self


class ExperimentConfig(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "synthetic"
    seed: int = 42
    work_dir: Path = Path("runs")
    """Root for everything a run writes (features, checkpoints, reports, scores)."""


class Config(_Section):
    """The whole experiment. Every section has defaults, so a YAML file states only what differs."""

    experiment: ExperimentConfig = ExperimentConfig()
    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    tasks: TasksConfig = TasksConfig()
    training: TrainingConfig = TrainingConfig()
    tracking: TrackingConfig = TrackingConfig()
    export: ExportConfig = ExportConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    transform: TransformConfig = TransformConfig()
    scoring: ScoringConfig = ScoringConfig()
    pipeline: PipelineConfig = PipelineConfig()
    tuning: TuningConfig = TuningConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        syn = self.data.synthetic
        if syn.num_impressions < syn.num_days:
            raise ValueError(
                f"data.synthetic.num_impressions ({syn.num_impressions}) must be at least "
                f"data.synthetic.num_days ({syn.num_days})"
            )
        if not any(f.kind != "numeric" for f in self.features.features) and self.features.features:
            raise ValueError("features: the model needs at least one id or id_list feature")
        kinds = self.tasks.kinds
        self._check_model_inputs(kinds)
        unknown = sorted(set(self.evaluation.score_exponents) - set(kinds))
        if unknown:
            raise ValueError(f"evaluation.score_exponents: unknown tasks {unknown}; tasks are {sorted(kinds)}")
        allowed = metric_names.evaluation_keys(kinds, self.evaluation.ndcg_k)
        for gate in self.evaluation.gates:
            if gate.metric not in allowed:
                raise ValueError(metric_names.unknown_metric_message(gate.metric, allowed, "evaluation.gates"))
        promo = self.pipeline.promotion.metric
        if promo not in allowed:
            raise ValueError(metric_names.unknown_metric_message(promo, allowed, "pipeline.promotion.metric"))
        if metric_names.higher_is_better(promo) is None:
            raise ValueError(f"pipeline.promotion.metric: {promo!r} has no better direction; promote on a metric such as ctr/auc")
        tuned = self.tuning.metric
        if tuned is not None:
            allowed_val = metric_names.validation_keys(kinds)
            if tuned not in allowed_val:
                raise ValueError(metric_names.unknown_metric_message(tuned, allowed_val, "tuning.metric"))
            if metric_names.higher_is_better(tuned) is None:
                raise ValueError(f"tuning.metric: {tuned!r} has no better direction; tune on a metric such as ctr/auc")
        return self

    def _check_model_inputs(self, kinds: dict[str, str]) -> None:
        """``model.task_tables`` and ``model.position_tower`` name features and tasks that exist."""
        if not self.features.features:
            return
        tables = {f.table_name for f in self.features.features if f.kind != "numeric"}
        missing = [t for t in self.model.task_tables if t not in tables]
        if missing:
            raise ValueError(f"model.task_tables: {missing} are not tables of any feature; tables are {sorted(tables)}")
        tower = self.model.position_tower
        if tower is None:
            return
        ids = {f.name: f for f in self.features.features if f.kind == "id"}
        bad = [f for f in tower.features if f not in ids]
        if bad:
            raise ValueError(f"model.position_tower.features: {bad} are not id features; id features are {sorted(ids)}")
        if kinds.get(tower.task) != contract.BINARY:
            raise ValueError(f"model.position_tower.task: {tower.task!r} is not a binary task of tasks.tasks")
        own = {ids[f].table_name for f in tower.features}
        shared = sorted({f.table_name for f in self.features.features if f.kind != "numeric" and f.name not in tower.features} & own)
        if shared:
            raise ValueError(f"model.position_tower.features: tables {shared} are also read by the main model's features; "
                             "the tower's features need tables of their own")
        if len(ids) == len(tower.features) and not any(f.kind == "id_list" for f in self.features.features):
            raise ValueError("model.position_tower.features: the main model would have no id feature left")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON types (for MLflow params and saved copies)."""
        return self.model_dump(mode="json")

    def content_hash(self) -> str:
        """Stable short hash of the resolved config, less the engine sections (``transform``,
        ``scoring``): where a job runs changes none of its outputs, so it does not re-key a
        pipeline run or a training resume."""
        blob = json.dumps({k: v for k, v in self.to_dict().items() if k not in ENGINE_SECTIONS}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. model.num_experts=8")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key or key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted overrides set (sections are created as needed)."""
    out = json.loads(json.dumps(raw, default=str))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain dict as a :class:`Config`; errors name ``source`` and every bad key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_raw_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML mapping of ``path`` with dotted ``overrides`` set, not yet validated (what a
    derived config file, such as the tuner's, is written from)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    return apply_overrides(raw, overrides) if overrides else raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (YAML), apply dotted ``overrides`` and validate.

    Relative paths inside the config are kept as written: they resolve against the current
    directory, which is the project root for the documented commands.
    """
    source = "<defaults>" if path is None else str(path)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return config_from_dict(load_raw_config(path, overrides), source)
