"""Your own data: `features transform` and `score` by source and size, through the real CLI.

One synthetic feed per size, read four ways with the same features (``configs/own_data.yaml``):
the synthetic source (Parquet, the project's own column names); ``data.source: files`` over the
same rows as Parquet in foreign column names; the same as CSV; and the Parquet files on a local
S3-compatible server (moto's server mode, started here, sizes up to ``--s3-max-rows``), writing
the model-ready output to the bucket too. Then ``score`` on the first size, candidates and scores
local or on the bucket (an untrained model exported to ONNX: rows/s do not depend on the weights).

The object store here is a Python server on the same 2 cores as the job: its figures measure the
object-store path's overhead on this machine, not an object store's throughput. Rows/s count
impressions over the whole command's wall time; peak RSS is the command's own. Writes
benchmarks/results/sources.json.

    python benchmarks/bench_sources.py [--sizes 1000000 10000000] [--repeats 3] [--s3-max-rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from common import machine, run_cli, write_results  # noqa: E402

from recsys_moe import storage  # noqa: E402
from recsys_moe.config import ModelConfig, TasksConfig  # noqa: E402
from recsys_moe.export.onnx_export import export_onnx  # noqa: E402
from recsys_moe.features.spec import FeatureSpec  # noqa: E402
from recsys_moe.models import build_model  # noqa: E402
from tests.data.foreign_feed import foreign_impressions, write_foreign_feed  # noqa: E402
from tests.s3server import local_s3  # noqa: E402

CONFIG = "configs/own_data.yaml"


def _sets(files: dict | None, raw: Path, work: Path) -> list[str]:
    out = [f"experiment.work_dir={work}", f"data.raw_dir={raw}"]
    if files is None:
        return [*out, "data.source=synthetic"]
    return [*out, *(f"data.files.{t}.path={files[t]['path']}" for t in ("impressions", "users", "items"))]


def _flags(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench(job: str, source: str, args: list[str], rows: int, repeats: int, fresh: str | None = None) -> dict:
    """Median rows/s and peak RSS of ``recsys-moe JOB ARGS`` over ``repeats`` fresh processes;
    ``fresh`` is deleted before each run (a finished scoring output would be resumed, not redone)."""
    runs = []
    for _ in range(repeats):
        if fresh is not None:
            storage.remove(fresh)
        run = run_cli(*job.split(), *args)
        runs.append({"seconds": run.seconds, "rows_per_s": rows / run.seconds, "peak_rss_mib": run.peak_rss_mib})
    res = {"job": job, "source": source, "rows": rows, "rows_per_s_median": _median(runs, "rows_per_s"),
           "peak_rss_mib_median": _median(runs, "peak_rss_mib"), "runs": runs}
    print(f"{job:>18} {source:>14} {rows:>12,} rows  {res['rows_per_s_median']:>10,.0f} rows/s  "
          f"peak RSS {res['peak_rss_mib_median']:,.0f} MiB", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3-max-rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sources.json")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp_name, local_s3("recsys-bench") as bucket:
        tmp = Path(tmp_name)
        for i, rows in enumerate(args.sizes):
            raw, work = tmp / f"raw-{rows}", tmp / f"work-{rows}"
            run_cli("data", "synth", "-c", "configs/synthetic.yaml", "--set", f"data.synthetic.num_impressions={rows}",
                    "--set", f"data.raw_dir={raw}")
            sources = {"synthetic": None,
                       "files-parquet": write_foreign_feed(raw, tmp / f"parquet-{rows}", fmt="parquet"),
                       "files-csv": write_foreign_feed(raw, tmp / f"csv-{rows}", fmt="csv")}
            if rows <= args.s3_max_rows:
                sources["files-s3"] = write_foreign_feed(raw, f"{bucket}/feed-{rows}", fmt="parquet")
            spec = str(work / "features/spec")
            run_cli("features", "fit", "-c", CONFIG, *_flags(_sets(None, raw, work)), "-o", spec)
            for name, files in sources.items():
                sets = _sets(files, raw, work)
                out = f"{bucket}/model-ready-{rows}" if name == "files-s3" else str(tmp / f"out-{name}-{rows}")
                results.append(bench("features transform", name, ["-c", CONFIG, *_flags(sets), "-o", out, "--overwrite"],
                                     rows, args.repeats))
            if i == 0:  # scoring: candidates and scores local, then both on the bucket
                fs = FeatureSpec.load(spec)
                torch.manual_seed(0)
                model = tmp / "export" / "model.onnx"
                model.parent.mkdir()
                export_onnx(build_model(ModelConfig(), TasksConfig(), fs).eval(), fs, model,
                            pq.read_table(tmp / f"out-files-parquet-{rows}" / "validation"))
                fs.save(model.parent / "feature_spec")
                cands = foreign_impressions(pl.read_parquet(raw / "impressions/*/*.parquet")).drop("clicked", "play_ms")
                cands.write_parquet(tmp / "candidates.parquet")
                storage.write_parquet(cands, f"{bucket}/candidates/part-0.parquet")
                places = {"files-parquet": (str(tmp / "candidates.parquet"), str(tmp / f"out-files-parquet-{rows}" / "state"),
                                            str(tmp / "scores")),
                          "files-s3": (f"{bucket}/candidates/*.parquet", f"{bucket}/model-ready-{rows}/state", f"{bucket}/scores")}
                for name, (candidates, state, out) in places.items():
                    if name in sources:
                        score_args = ["-c", CONFIG, *_flags(_sets(sources[name], raw, work)), "--model", str(model),
                                 "--input", candidates, "--state", state, "--output", out]
                        results.append(bench("score", name, score_args, cands.height, args.repeats, fresh=out))
    payload = {"benchmark": "sources", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats,
               "config": CONFIG, "results": results,
               "note": "files-s3: a local moto server on the same cores (overhead of the object-store path, not S3 throughput)"}
    write_results(args.out, payload)


if __name__ == "__main__":
    main()
