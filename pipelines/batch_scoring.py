"""The batch scoring job (``recsys-moe score``): a model reference and raw candidates in, scores out.

It resolves the model through the registry (an alias, a version or an exported file), finds the
history state the work-dir layout knows for that model's FeatureSpec (the newest of the
standalone transform's and every pipeline run's, unless ``state_dir`` is given) and runs the
torch-free scoring library, :func:`recsys_moe.serving.scoring.score`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from recsys_moe.config import Config
from recsys_moe.features.spec import FeatureSpec
from recsys_moe.layout import WorkDir
from recsys_moe.registry import RegistryError, resolve
from recsys_moe.serving.scoring import ScoreSummary, ScoringError, input_files, score


def run(cfg: Config, model: str, input_path: str | Path, output: str | Path | None = None, state_dir: str | Path | None = None,
        batch_rows: int = 100_000, providers: str = "auto", overwrite: bool = False, precision: str = "fp32",
        on_start: Callable[[int], None] | None = None, on_rows: Callable[[int], None] | None = None,
        engine: str | None = None) -> ScoreSummary:
    """Score every row of ``input_path`` (a Parquet file, folder or glob, local or an
    object-store URI) once into ``output`` (likewise); ``on_start`` gets the input's row count
    before scoring starts. ``engine`` (default ``scoring.engine``): ``local`` scores in this
    process, ``ray`` on Ray Data (:mod:`recsys_moe.serving.ray_scoring`)."""
    engine = engine or cfg.scoring.engine
    if engine not in ("local", "ray"):
        raise ScoringError(f"engine {engine!r}: local or ray")
    layout = WorkDir.of(cfg)
    files = input_files(input_path)
    if on_start is not None:
        from recsys_moe.serving.scoring import input_rows

        on_start(sum(input_rows(f) for f in files))
    with tempfile.TemporaryDirectory() as cache:
        try:
            resolved = resolve(cfg, model, Path(cache), precision)
        except RegistryError as exc:
            raise ScoringError(str(exc)) from exc
        origin = None
        if state_dir is None:
            found = layout.find_state(FeatureSpec.load(resolved.spec_dir).content_hash)
            state_dir, origin = (found.path, found.origin) if found else (None, None)
        if engine == "ray":
            from recsys_moe.serving.ray_scoring import score_on_ray as scorer
        else:
            scorer = score
        return scorer(cfg, resolved, files, output or layout.scores_dir, state_dir,
                      batch_rows=batch_rows, providers=providers, overwrite=overwrite, on_rows=on_rows, state_origin=origin)
