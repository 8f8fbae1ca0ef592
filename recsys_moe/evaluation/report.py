"""The evaluation report, written twice from one list of blocks: Markdown (plots as PNG files
beside it) and a self-contained HTML page (plots inlined as base64 PNG)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

Block = tuple  # ("h1"|"h2"|"p", text) | ("table", headers, rows) | ("img", path, caption)


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


TASK_COLUMNS = {
    "binary": ["auc", "gauc", "logloss", "ne", "calibration", "ece", "mean_pred", "observed_rate"],
    "watch_time": ["rmse_log1p", "mae_log1p", "spearman", "xauc", "mean_pred_s", "mean_observed_s"],
}


def blocks(result: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    """The report's content from ``metrics.json``'s dict and the plot files."""
    p = result["primary"]
    kinds = result["task_kinds"]
    out: list[Block] = [
        ("h1", f"Evaluation: {result['model']}"),
        ("p", f"Split **{result['split']}** ({result['window'][0]} .. {result['window'][1]}, held out by time): "
              f"{p['rows']:,} impressions, {p['users']:,} users. Model form: {result['model_form']}; "
              f"FeatureSpec {result['spec_hash']}; training run {result.get('training_run_id') or 'unknown'}; "
              f"evaluated {result['evaluated_at']} in {result['seconds']:.1f}s."),
    ]
    failed = result["quality_gates"]["failed"]
    if result["quality_gates"]["checked"]:
        verdict = "**FAILED**: " + "; ".join(failed) if failed else "all passed"
        out.append(("p", f"Quality gates ({', '.join(result['quality_gates']['checked'])}): {verdict}."))
    models = [("this model", p)]
    if result.get("oracle"):
        models.append(("oracle (true probabilities)", result["oracle"]))
    models += [(c["model"], c["metrics"]) for c in result.get("comparisons", [])]
    for t, kind in kinds.items():
        cols = TASK_COLUMNS[kind]
        out.append(("h2", f"Task `{t}` ({kind})"))
        out.append(("table", ["model", *cols], [[name, *[fmt(mm["tasks"].get(t, {}).get(c)) for c in cols]] for name, mm in models]))
        if kind == "binary":
            g = p["tasks"][t]
            out.append(("p", f"GAUC averages {g['gauc_users']:,} users (weighted by impressions); {g['gauc_skipped_users']:,} "
                             "users with one class only are skipped. NE is logloss over the entropy of the base rate."))
        else:
            g = p["tasks"][t]
            how = "sampled" if g["xauc_sampled"] else "all"
            out.append(("p", f"XAUC over {how} {g['xauc_pairs']:,} within-user pairs with different watch times."))
        if f"reliability_{t}" in plots:
            out.append(("img", plots[f"reliability_{t}"], f"Reliability of {t}: mean predicted vs observed rate per bin"))
        if f"watch_{t}" in plots:
            out.append(("img", plots[f"watch_{t}"], f"{t}: observed vs predicted mean seconds, 20 bins of equal rows"))
    ks = [k for k in p["ranking"] if k.startswith("ndcg_at_")]
    out.append(("h2", "Ranking"))
    out.append(("p", f"NDCG per user of the score {p['ranking']['score']} against realised watch seconds "
                     f"({p['ranking']['users']:,} users with some watch time)."))
    out.append(("table", ["model", *ks], [[name, *[fmt(mm.get("ranking", {}).get(k)) for k in ks]] for name, mm in models]))
    for c in result.get("comparisons", []):
        out.append(("h2", f"Compared with {c['model']}"))
        rows = []
        for key, d in c["deltas"].items():
            ci = c["ci"].get(key)
            interval = f"[{ci['low']:+.4f}, {ci['high']:+.4f}]" + (" significant" if ci["significant"] else "") if ci else ""
            rows.append([key, fmt(d["this"]), fmt(d["other"]), f"{d['delta']:+.4f}" if d["delta"] is not None else "n/a", interval])
        level = next(iter(c["ci"].values()), {}).get("level", 0.95)
        out.append(("table", ["metric", "this model", c["model"], "delta", f"{level:.0%} CI (user bootstrap)"], rows))
    for seg, buckets in p.get("segments", {}).items():
        cols = sorted({k for b in buckets.values() for k in b if k != "rows"})
        out.append(("h2", f"Segments by {seg.replace('_', ' ')} (train-window impressions)"))
        out.append(("table", ["bucket", "rows", *cols], [[name, fmt(b["rows"]), *[fmt(b.get(c)) for c in cols]] for name, b in buckets.items()]))
    out.append(("h2", "Gates"))
    gates = result.get("gates")
    if gates:
        util = ", ".join(f"expert {i}: {u:.3f}" for i, u in enumerate(gates["utilisation"]))
        ent = ", ".join(f"{t}: {e:.3f}" for t, e in zip(gates["tasks"], gates["entropy"], strict=True))
        collapsed = gates["collapsed_experts"]
        out.append(("p", f"Utilisation {util}. Mean gate entropy (nats) {ent}. "
                         f"Collapse: {'experts ' + str(collapsed) if collapsed else 'none'} (threshold {gates['threshold']})."))
        if "gates" in plots:
            out.append(("img", plots["gates"], "Mean gate weight per task and expert on this split"))
        if "drop_rate" in gates:
            out.append(("p", "Sparse dispatch: share of each task's chosen (row, expert) pairs that an expert's "
                             "capacity dropped (model.gate.eval_capacity_factor), overall and for the experts that dropped any."))
            rows = []
            for t, name in enumerate(gates["tasks"]):
                worst = [f"expert {e}: {r:.2%}" for e, r in enumerate(gates["drop_rate"][t]) if r > 0]
                rows.append([name, f"{gates['task_drop_rate'][t]:.2%}", ", ".join(worst[:8]) or "none"])
            out.append(("table", ["task", "dropped pairs", "by expert"], rows))
    else:
        out.append(("p", result.get("gates_note", "This model form has no gate outputs.")))
    cost = result.get("serving_cost")
    if cost:
        out.append(("h2", "Serving cost"))
        out.append(("p", f"What the model holds in memory per precision of the export (row-wise INT8 tables keep the dense "
                         f"layers in float32), and {cost['flops_per_row']['total']:,} FLOPs per row."))
        parts = [k for k in cost["bytes"]["fp32"] if k != "total"] + ["total"]
        out.append(("table", ["part", *[f"{p} (MiB)" for p in cost["bytes"]]],
                    [[k, *[f"{cost['bytes'][p][k] / 2**20:,.2f}" for p in cost["bytes"]]] for k in parts]))
    return out


def to_markdown(doc: list[Block], base: Path) -> str:
    lines: list[str] = []
    for b in doc:
        if b[0] == "h1":
            lines += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            lines += [f"## {b[1]}", ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![{b[2]}]({Path(b[1]).relative_to(base).as_posix()})", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
.wide{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}figure{margin:1em 0}img{max-width:560px}
figcaption{font-size:.9em;color:#555}"""


def _inline(text: str) -> str:
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{s}</b>" if i % 2 else s for i, s in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(parts))


def to_html(doc: list[Block]) -> str:
    body: list[str] = []
    for b in doc:
        if b[0] in ("h1", "h2"):
            body.append(f"<{b[0]}>{_inline(b[1])}</{b[0]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    title = html.escape(doc[0][1]) if doc else "evaluation"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
