"""Serving memory on paper: what embedding tables of a production catalogue cost in each precision.

Computed, not run, by the same code the export uses for ``cost.json``
(:func:`recsys_moe.models.cost.table_bytes`): float32, float16 and row-wise INT8 (a byte per value
plus a float16 scale and offset per row). Writes benchmarks/results/sizing.json.

    python benchmarks/bench_sizing.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, write_results  # noqa: E402

TABLES = {"items (50M x 64)": (50_000_000, 64), "users (100M x 64)": (100_000_000, 64)}


def main() -> None:
    from recsys_moe.models.cost import PRECISIONS, table_bytes

    rows = []
    for name, (n, dim) in TABLES.items():
        rows.append({"table": name, "rows": n, "dim": dim, "bytes": {p: table_bytes(n, dim, p) for p in PRECISIONS}})
    total = {p: sum(r["bytes"][p] for r in rows) for p in PRECISIONS}
    rows.append({"table": "both", "rows": sum(r["rows"] for r in rows), "dim": 64, "bytes": total})
    for r in rows:
        print(f"{r['table']:<20} " + "  ".join(f"{p} {r['bytes'][p] / 1e9:6.2f} GB" for p in PRECISIONS))
    write_results(ROOT / "benchmarks/results/sizing.json", {
        "benchmark": "sizing", "machine": machine(), "date": time.strftime("%Y-%m-%d"), "computed": True,
        "note": "bytes of the embedding tables alone; the dense layers of the default MMoE add well under 1 MB",
        "tables": rows,
    })


if __name__ == "__main__":
    main()
