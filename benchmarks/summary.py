"""The README's benchmark summary, generated from the JSON files in benchmarks/results/.

Every figure in the README's summary comes from a results file, through this script, so the two
cannot drift apart (a test runs ``--check``).

    python benchmarks/summary.py                 # print the Markdown block
    python benchmarks/summary.py --write README.md   # and the detail tables into docs/benchmarks.md
    python benchmarks/summary.py --check README.md   # exit 1 when the README's block is stale

The README gets the headline tables; the per-configuration tables (every expert count and
gate of ``bench_experts.py``) go to the generated block of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- benchmark-summary:start -->", "<!-- benchmark-summary:end -->"
DETAILS = ROOT / "docs" / "benchmarks.md"
DETAILS_START, DETAILS_END = "<!-- benchmark-details:start -->", "<!-- benchmark-details:end -->"
MODELS = {"default": "default", "mmoe": "MMoE", "ple": "PLE", "shared_bottom": "SharedBottom", "single_task": "SingleTask"}


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _metric(block: dict, new: str, old: str) -> float:
    """A metric under its vocabulary name, or the name older result files used."""
    return block[new] if new in block else block[old]


def _quality_rows(train: dict, split: str) -> list[str]:
    """One row per model: CTR AUC and ECE, watch-time Spearman, mean predicted over observed
    seconds, collapsed experts (older result files lack the last three)."""
    rows = []
    models = train["splits"][split]["models"]
    for kind, label in MODELS.items():
        m = models.get(kind)
        if m is None:
            continue
        mean, std = m["mean"], m["std"]
        if kind == "default":
            label = f"**default** ({MODELS.get(m['runs'][0].get('kind'), '?')}, `configs/kuairand.yaml`)"

        def cell(new: str, old: str | None = None, digits: int = 4, mean=mean, std=std) -> str:
            if new not in mean and (old is None or old not in mean):
                return "-"
            v, e = _metric(mean, new, old or new), _metric(std, new, old or new)
            return "-" if v != v else f"{v:.{digits}f} ± {e:.{digits}f}"
        collapsed = mean.get("gate/collapsed_experts", float("nan"))
        rows.append(f"| {label} | {cell('ctr/auc', 'auc_ctr')} | {cell('ctr/ece', digits=3)} | "
                    f"{cell('watch_time/spearman', 'spearman_watch_time')} | {cell('watch_time/calibration', digits=3)} | "
                    f"{'-' if collapsed != collapsed else f'{collapsed:.0f}'} |")
    return rows


def _train_rate(split: dict) -> float:
    return split["train_samples_per_s_median"] if "train_samples_per_s_median" in split else split["mmoe_train_samples_per_s_median"]


def _gap_line(train: dict) -> str:
    """The default config against SingleTask, per split (the issue's target: +0.002 CTR AUC)."""
    parts = []
    for split, block in train["splits"].items():
        models = block["models"]
        if "default" in models and "single_task" in models:
            gap = models["default"]["mean"]["ctr/auc"] - models["single_task"]["mean"]["ctr/auc"]
            parts.append(f"{split} split {gap:+.4f}")
    return ("Default over SingleTask, mean CTR AUC: " + ", ".join(parts) + ".") if parts else ""


def summary() -> str:
    train, train4k = _load("train_kuairand.json"), _load("train_kuairand_bs4096.json")
    features, score, onnx = _load("features.json"), _load("score.json"), _load("onnx.json")
    evaluate, synthetic = _load("evaluate.json"), _load("synthetic_quality.json")
    header = ["| model | CTR AUC | CTR ECE | watch-time Spearman | predicted / observed seconds | collapsed experts |",
              "|---|---|---|---|---|---|"]
    out = [START, "",
           f"Quality on KuaiRand-Pure, test days held out by time (`bench_train.py`, {train['date']}; mean ± std "
           "over 3 seeds). `default` is the tuned config; every other row is the same config with only `model.kind` "
           "changed. Issue split: train 04-25..05-01, validate 05-02, test 05-03..05-04:", "",
           *header, *_quality_rows(train, "issue")]
    if "peers" in train["splits"]:
        out += ["", "Peers' split (train 04-25..04-30, validate 05-01, test 05-02..05-04; the peers' figures are in "
                "[`docs/benchmarks.md`](docs/benchmarks.md)):", "", *header, *_quality_rows(train, "peers")]
    if _gap_line(train):
        out += ["", _gap_line(train)]
    out += ["", "The MMoE paper's task-correlation study, the position-bias study, dense against sparse expert "
            "dispatch and every smaller serving copy: [`docs/benchmarks.md`](docs/benchmarks.md#latest-detail-tables)."]
    out += ["", f"Speed on {train['machine']} (no GPU); each figure a median, from `benchmarks/results/`:", "",
            "| what | figure | date | results file |", "|---|---|---|---|"]
    issue = train["splits"]["issue"]
    which = issue.get("throughput_model", "mmoe (mmoe)").split(" ")[0]
    out.append(f"| training, KuaiRand, {which} config, batch 2,048 (steady epochs) | {_train_rate(issue):,.0f} samples/s "
               f"| {train['date']} | `train_kuairand.json` |")
    out.append(f"| training, KuaiRand, MMoE 4 experts [64] (the former default), batch 4,096 | "
               f"{_train_rate(train4k['splits']['issue']):,.0f} samples/s | {train4k['date']} | `train_kuairand_bs4096.json` |")
    out += _train_scale_rows()
    out += _sharding_rows()
    for r in features["results"]:
        out.append(f"| `features transform`, {r['dataset']} | {r['rows_per_s_median']:,.0f} rows/s, "
                   f"peak RSS {r['peak_rss_mib_median']:,.0f} MiB{_ray_figures(r)} | {features['date']} | `features.json` |")
    at4k = next(r for r in onnx["results"] if r["batch_size"] == 4096)
    out.append(f"| ONNX Runtime session, KuaiRand MMoE, 4,096 rows (model only) | {at4k['ort_tuned']:,.0f} rows/s "
               f"({at4k['ort_tuned_over_torch_torchrec']:.2f}x the torchrec model) | {onnx['date']} | `onnx.json` |")
    for r in score["results"]:
        out.append(f"| `score` end to end, {r['dataset']} | {r['rows_per_s_median']:,.0f} rows/s, "
                   f"peak RSS {r['peak_rss_mib_median']:,.0f} MiB{_ray_figures(r)} | {score['date']} | `score.json` |")
    secs = evaluate["median_seconds"]
    out.append(f"| `evaluate` (ONNX), {evaluate['rows']:,} rows, every metric and report | {secs['evaluate_onnx']:.1f} s "
               f"({evaluate['ratio_to_two_scorings']['evaluate_onnx']:.2f}x scoring them twice) | {evaluate['date']} | `evaluate.json` |")
    dense = next(r for r in synthetic["results"] if r["world"] == "dense")
    out.append(f"| synthetic dense world: MMoE CTR AUC over the oracle's | {dense['auc_ratio']:.3f} "
               f"| {synthetic['date']} | `synthetic_quality.json` |")
    out += _sources_rows()
    out += _compression_brief()
    out += ["", END]
    return "\n".join(out)


def details() -> str:
    """The studies and per-configuration tables for docs/benchmarks.md."""
    rows = _whole_model_rows(_load("experts.json")) if (RESULTS / "experts.json").is_file() else []
    return "\n".join([DETAILS_START, *_study_rows(), *_experts_rows(), *rows, *_compression_rows(), *_sizing_rows(), "", DETAILS_END])


def _train_scale_rows() -> list[str]:
    """Memory against streaming training, and streaming as the data grows (train_scale.json)."""
    if not (RESULTS / "train_scale.json").is_file():
        return []
    ts = _load("train_scale.json")
    first, date = ts["sizes"][0], ts["date"]
    m, st = first["memory"], first["stream"]
    out = [f"| training, synthetic-{first['rows'] / 1e6:g}M, in memory / streamed (1 epoch) | {m['samples_per_s_median']:,.0f} / "
           f"{st['samples_per_s_median']:,.0f} samples/s ({ts['checks']['stream_over_memory_samples_per_s']:.2f}x), peak RSS "
           f"{m['peak_rss_mib_median']:,.0f} / {st['peak_rss_mib_median']:,.0f} MiB | {date} | `train_scale.json` |"]
    for size in ts["sizes"][1:]:
        s2 = size["stream"]
        out.append(f"| training, synthetic-{size['rows'] / 1e6:g}M, streamed | {s2['samples_per_s_median']:,.0f} samples/s, peak RSS "
                   f"{s2['peak_rss_mib_median']:,.0f} MiB ({s2['peak_rss_mib_median'] / st['peak_rss_mib_median']:.2f}x the "
                   f"{first['rows'] / 1e6:g}M run's) | {date} | `train_scale.json` |")
    out.append(f"| streaming loader alone (no model), synthetic-{first['rows'] / 1e6:g}M | "
               f"{first['loader_alone']['rows_per_s_median']:,.0f} rows/s ({ts['checks']['loader_over_trainer']:.1f}x the trainer) "
               f"| {date} | `train_scale.json` |")
    return out


def _ray_figures(result: dict) -> str:
    """The Ray engine's figures beside the local one's, when the benchmark ran it."""
    ray = result.get("ray")
    if not ray:
        return ""
    cores = f"; {ray['cores_for_1b_rows_in_1h']:.0f} cores for 1B rows in an hour" if "cores_for_1b_rows_in_1h" in ray else ""
    return (f"; Ray engine on the same 2 cores: {ray['rows_per_s_median']:,.0f} rows/s, {ray['peak_rss_mib_median']:,.0f} MiB "
            f"with its processes{cores}")


def _sharding_rows() -> list[str]:
    """Replicated against sharded tables as they grow, 2 processes on this CPU (sharding.json)."""
    if not (RESULTS / "sharding.json").is_file():
        return []
    sh = _load("sharding.json")
    sizes = sh["sizes"] if len(sh["sizes"]) < 3 else [sh["sizes"][0], sh["sizes"][-1]]
    out = []
    for size in sizes:
        ddp, dmp = size["ddp"], size["dmp"]
        out.append(f"| training steps, 2 processes (gloo), user and item tables {size['rows_per_table'] / 1e6:g}M x {size['dim']} "
                   f"each: replicated (DDP) / sharded table-wise (DMP) | {ddp['samples_per_s_median']:,.0f} / "
                   f"{dmp['samples_per_s_median']:,.0f} samples/s, largest rank {ddp['peak_rss_mib_max_rank_median']:,.0f} / "
                   f"{dmp['peak_rss_mib_max_rank_median']:,.0f} MiB | {sh['date']} | `sharding.json` |")
    return out


SOURCE_LABELS = {"synthetic": "synthetic source (Parquet, own names)", "files-parquet": "`files`, Parquet, foreign names",
                 "files-csv": "`files`, CSV, foreign names", "files-s3": "`files`, Parquet on a local S3 server (moto)"}


def _sources_rows() -> list[str]:
    """Transform and scoring rows/s by data source and size, from sources.json (when run)."""
    if not (RESULTS / "sources.json").is_file():
        return []
    src = _load("sources.json")
    res = src["results"]
    sizes = sorted({r["rows"] for r in res if r["job"] == "features transform"})
    scored = sorted({r["rows"] for r in res if r["job"] == "score"})
    cols = [f"transform {n / 1e6:g}M" for n in sizes] + [f"score {n / 1e6:g}M" for n in scored]
    out = ["", f"Your own data (`bench_sources.py`, {src['date']}; rows/s and peak RSS of the whole command, median of "
           f"{src['repeats']}; the S3 server runs on the same 2 cores, so its row measures overhead, not S3):", "",
           "| source | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for source, label in SOURCE_LABELS.items():
        cells = []
        for job, n in [("features transform", n) for n in sizes] + [("score", n) for n in scored]:
            r = next((r for r in res if r["job"] == job and r["source"] == source and r["rows"] == n), None)
            cells.append(f"{r['rows_per_s_median']:,.0f} ({r['peak_rss_mib_median']:,.0f} MiB)" if r else "")
        if any(cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _compression_brief() -> list[str]:
    """One line per model on the smaller copies; the full table is in docs/benchmarks.md."""
    if not (RESULTS / "onnx_compression.json").is_file():
        return []
    comp = _load("onnx_compression.json")
    parts = []
    for name, m in comp["models"].items():
        fp32, int8 = m["variants"]["fp32"], m["variants"]["int8"]
        q = m["exports"]["plain"]["int8_quality"]["tasks"]["ctr"]["auc_drop"]
        parts.append(f"{name}: INT8 (a scale per row) {int8['file_bytes'] / fp32['file_bytes']:.2f}x the float32 file, peak RSS "
                     f"{int8['peak_rss_mib']:,.0f} against {fp32['peak_rss_mib']:,.0f} MiB, "
                     f"{int8['rows_per_s']['4096'] / fp32['rows_per_s']['4096']:.2f}x its rows/s, CTR AUC drop {q:+.5f}")
    return ["", f"Smaller serving copies (`bench_onnx.py --part compression`, {comp['date']}): " + "; ".join(parts)
            + ". Every copy (fp16, per-table INT8, pruned) and its quality gate: "
            "[`docs/benchmarks.md`](docs/benchmarks.md#latest-detail-tables)."]


def _sweep_verdict(results: list[dict]) -> str:
    """Whether the MoE models' lead over SharedBottom grows as the tasks correlate less (the
    MMoE paper's finding), on both tasks, from the lowest to the highest correlation swept."""
    ordered = sorted(results, key=lambda r: r["task_correlation"])
    low, high = ordered[0], ordered[-1]
    parts = []
    for kind in ("mmoe", "ple"):
        if kind not in low["models"]:
            continue
        for metric, name in (("ctr/auc", "CTR AUC"), ("watch_time/spearman", "watch Spearman")):
            def lead(r: dict, kind=kind, metric=metric) -> float:
                return r["models"][kind]["mean"][metric] - r["models"]["shared_bottom"]["mean"][metric]
            grows = "grows" if lead(low) > lead(high) else "does not grow"
            parts.append(f"{MODELS[kind]}'s {name} lead {grows} ({lead(high):+.4f} at {high['task_correlation']:+.1f}, "
                         f"{lead(low):+.4f} at {low['task_correlation']:+.1f})")
    return "As the tasks correlate less: " + "; ".join(parts) + "."


def _study_rows() -> list[str]:
    """The MMoE paper's correlation sweep and the position-bias study, when they have been run."""
    out: list[str] = []
    if (RESULTS / "task_correlation.json").is_file():
        tc = _load("task_correlation.json")
        kinds = [k for k in ("shared_bottom", "mmoe", "ple") if k in tc["results"][0]["models"]]
        out += ["", f"The MMoE paper's synthetic study (`bench_task_correlation.py`, {tc['date']}; data-rich world of 2,000 users "
                f"and items; mean of seeds {', '.join(map(str, tc['seeds']))}): test CTR AUC / watch-time Spearman as the two "
                "tasks' correlation varies, beside the oracle:", "",
                "| task correlation | oracle | " + " | ".join(MODELS[k] for k in kinds) + " | MMoE - SharedBottom (CTR AUC) |",
                "|---|---|" + "---|" * len(kinds) + "---|"]
        for row in tc["results"]:
            m = row["models"]
            cells = [f"{m[k]['mean']['ctr/auc']:.4f} / {m[k]['mean']['watch_time/spearman']:.4f}" for k in kinds]
            lead = m["mmoe"]["mean"]["ctr/auc"] - m["shared_bottom"]["mean"]["ctr/auc"] if {"mmoe", "shared_bottom"} <= set(m) else float("nan")
            out.append(f"| {row['task_correlation']:+.1f} | {row['oracle']['ctr/auc']:.4f} / {row['oracle']['watch_time/spearman']:.4f} | "
                       + " | ".join(cells) + f" | {lead:+.4f} |")
        out += ["", _sweep_verdict(tc["results"])]
    if (RESULTS / "position.json").is_file():
        pos = _load("position.json")
        out += ["", f"Position bias (`bench_position.py`, {pos['date']}; synthetic feeds whose logging ranker chose the slots, "
                "following relevance in part and its own taste for each item in the rest; mean ± std over seeds "
                f"{', '.join(map(str, pos['seeds']))}): how well the click model ranks the generator's position-free click "
                "probability on the test days. `logged slot` reads the slot the old ranker chose, which new candidates "
                "do not have:", "",
                "| ranker follows relevance | slot handling | Spearman with the position-free truth | AUC against position-free clicks | AUC on the logged clicks |",
                "|---|---|---|---|---|"]
        for w in pos["worlds"]:
            for arm, m in w["summary"].items():
                out.append(f"| {w['position_from_relevance']:g} | {arm} | " + " | ".join(
                    f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in ("spearman_vs_position_free", "auc_vs_position_free", "auc_logged_clicks")) + " |")
    return out


COPY_LABELS = {"int8": "int8, a scale per row", "int8_table": "int8, a scale per table", "pruned_int8": "pruned + int8 (per row)"}


def _compression_rows() -> list[str]:
    """INT8 and pruned copies from onnx_compression.json, the paper sizing from sizing.json."""
    out: list[str] = []
    if (RESULTS / "onnx_compression.json").is_file():
        comp = _load("onnx_compression.json")
        out += ["", f"Smaller serving copies (`bench_onnx.py --part compression`, {comp['date']}): file, peak RSS of a process "
                "scoring with the model, ONNX Runtime rows/s, and the quality gate against float32 on the validation split:", "",
                "| model | copy | file | peak RSS | rows/s at 4,096 | rows/s at 32,768 | CTR AUC drop | Spearman drop |",
                "|---|---|---|---|---|---|---|---|"]
        for name, m in comp["models"].items():
            for variant, v in m["variants"].items():
                export = m["exports"]["pruned" if variant.startswith("pruned") else "table" if variant == "int8_table" else "plain"]
                q = export["int8_quality"] if "int8" in variant else export["prune_quality"] if variant == "pruned" else None
                drops = ["", ""]
                if q:
                    drops = [f"{q['tasks']['ctr']['auc_drop']:+.5f}", f"{q['tasks']['watch_time']['spearman_drop']:+.5f}"]
                elif variant == "fp16" and export.get("fp16_parity"):
                    drops = [f"parity: max abs diff of probs_ctr {export['fp16_parity']['max_abs_diff']['probs_ctr']:.1e}", ""]
                out.append(f"| {name} | {COPY_LABELS.get(variant, variant)} | {v['file_bytes'] / 2**20:,.1f} MiB | {v['peak_rss_mib']:,.0f} MiB | "
                           f"{v['rows_per_s']['4096']:,.0f} | {v['rows_per_s']['32768']:,.0f} | {drops[0]} | {drops[1]} |")
        for name, m in comp["models"].items():
            forced = m["exports"].get("pruned", {}).get("forced")
            if forced and "passes_default_gate" in forced:
                verdict = "would serve" if forced["passes_default_gate"] else "refuses"
                out += ["", f"{name}: no expert is under {forced['default_threshold']:g} of the gate weight for every task, so "
                        f"`pruned` leaves out the least-used one (expert {forced['expert']}, at most {forced['threshold']:.3f} "
                        f"of any task's gate weight) to show what pruning buys and costs; the default gate {verdict} it."]
        if any(m["exports"].get("pruned", {}).get("pruned_experts") for m in comp["models"].values()):
            out += ["", "The drops of `pruned + int8` are against the pruned float32 model."]
        for name, m in comp["models"].items():
            cost = m["exports"]["plain"]["cost"]
            tables = {k: v for k, v in cost["bytes"]["fp32"].items() if k.startswith("table/")}
            big = max(tables, key=tables.get)
            out.append("")
            out.append(f"{name}: in float32 the tables hold {sum(tables.values()) / 2**20:,.1f} MiB ({big.removeprefix('table/')} "
                       f"{tables[big] / 2**20:,.1f} MiB), the dense layers {cost['dense_params']['total'] * 4 / 2**20:,.2f} MiB; "
                       f"{cost['flops_per_row']['total']:,} FLOPs per row (its `cost.json`).")
    return out


def _sizing_rows() -> list[str]:
    out: list[str] = []
    if (RESULTS / "sizing.json").is_file():
        sizing = _load("sizing.json")
        out += ["", "Embedding tables of a production catalogue, computed by the export's cost code (`bench_sizing.py`):", "",
                "| tables | fp32 | fp16 | int8 (row-wise) |", "|---|---|---|---|"]
        for t in sizing["tables"]:
            out.append(f"| {t['table']} | " + " | ".join(f"{t['bytes'][p] / 1e9:,.2f} GB" for p in ("fp32", "fp16", "int8")) + " |")
    return out


def _experts_rows() -> list[str]:
    """Dense vs sparse dispatch from experts.json (when it has been run)."""
    if not (RESULTS / "experts.json").is_file():
        return []
    ex = _load("experts.json")
    out = ["", f"Mixture of experts, dense vs sparse dispatch (`bench_experts.py`, {ex['dates']['layer']}): the MMoE body alone, "
           f"batch {ex['batch_rows']:,}, {ex['tasks']} tasks, experts `[64]`; rows/s of a training step and of ONNX Runtime scoring:", "",
           "| experts | gate | train step, dense | train step, sparse | ONNX Runtime, dense | ONNX Runtime, sparse |",
           "|---|---|---|---|---|---|"]
    layer = [r for r in ex.get("layer", []) if r["hidden"] == [64]]
    for e in sorted({r["experts"] for r in layer}):
        soft = next(r for r in layer if r["experts"] == e and r["top_k"] is None)
        out.append(f"| {e} | softmax | {soft['train_step_rows_per_s']:,.0f} | | {soft['ort_rows_per_s']:,.0f} | |")
        for k in sorted({r["top_k"] for r in layer if r["experts"] == e and r["top_k"]}):
            d = next(r for r in layer if r["experts"] == e and r["top_k"] == k and r["dispatch"] == "dense")
            sp = next(r for r in layer if r["experts"] == e and r["top_k"] == k and r["dispatch"] == "sparse")
            out.append(f"| {e} | top-{k} | {d['train_step_rows_per_s']:,.0f} | {sp['train_step_rows_per_s']:,.0f} "
                       f"({sp['train_step_rows_per_s'] / d['train_step_rows_per_s']:.1f}x) | {d['ort_rows_per_s']:,.0f} | "
                       f"{sp['ort_rows_per_s']:,.0f} ({sp['ort_rows_per_s'] / d['ort_rows_per_s']:.1f}x) |")
    if "throughput" in ex:
        tp = ex["throughput"]
        out += ["", f"Whole-model training on KuaiRand, the configurations trained in alternation ({ex['dates']['throughput']}, median of "
                f"{len(tp['4 softmax']['runs'])} rounds): 4 experts softmax {tp['4 softmax']['samples_per_s']:,.0f} samples/s, "
                f"64 experts top-2 sparse {tp['64 top-2 sparse']['samples_per_s']:,.0f} "
                f"({tp['ratio_64_top2_sparse_over_4_softmax']:.2f}x), 64 experts top-2 dense {tp['64 top-2 dense']['samples_per_s']:,.0f}."]
    if "kernel" in ex:
        parts = [f"{r['experts']} experts, router {r['router']} (busiest expert {r['busiest_over_even']:.1f}x an even share): "
                 f"{r['padded_rows_per_s']:,.0f} padded, {r['grouped_rows_per_s']:,.0f} grouped" for r in ex["kernel"]]
        out += ["", f"Eager torch outside training, top-2 sparse, rows/s ({ex['dates']['kernel']}): " + "; ".join(parts) + "."]
    return out


def _whole_model_rows(ex: dict) -> list[str]:
    out: list[str] = []
    for dataset, block in ex.get("models", {}).items():
        out += ["", f"Whole model on {dataset} ({block['train_rows']:,} train rows; test days held out by time; "
                "mean ± std where 3 seeds ran, else one seed):", "",
                "| experts | gate | dispatch | training samples/s | ONNX Runtime rows/s (4,096) | dense parameters | dropped in training | CTR AUC | watch Spearman |",
                "|---|---|---|---|---|---|---|---|---|"]
        for c in block["configs"]:
            first = c["runs"][0]
            gate = "softmax" if c["top_k"] is None else f"top-{c['top_k']}"

            def stat(m: str, c=c) -> str:
                return f"{c['mean'][m]:.4f}" + (f" ± {c['std'][m]:.4f}" if len(c["runs"]) > 1 else "")
            out.append(f"| {c['experts']} | {gate} | {c['dispatch']} | {first['train_samples_per_s']:,.0f} | {first['ort_rows_per_s']:,.0f} "
                       f"| {first['dense_params']:,} | {max(first['train_drop_rate']):.2%} | {stat('ctr/auc')} | {stat('watch_time/spearman')} |")
    return out


def replace_block(text: str, block: str, start: str = START, end: str = END) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"the file has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return head + block + rest.split(end, 1)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, help="Replace the summary block of this Markdown file.")
    group.add_argument("--check", type=Path, help="Exit 1 when this file's summary block is not the current one.")
    args = ap.parse_args()
    block = summary()
    if args.write:
        args.write.write_text(replace_block(args.write.read_text(), block))
        print(f"wrote the summary into {args.write}")
        DETAILS.write_text(replace_block(DETAILS.read_text(), details(), DETAILS_START, DETAILS_END))
        print(f"wrote the detail tables into {DETAILS}")
    elif args.check:
        if replace_block(args.check.read_text(), block) != args.check.read_text():
            print(f"{args.check}: the benchmark summary is stale; run python benchmarks/summary.py --write {args.check}")
            sys.exit(1)
        print(f"{args.check}: the benchmark summary matches benchmarks/results/")
    else:
        print(block)


if __name__ == "__main__":
    main()
