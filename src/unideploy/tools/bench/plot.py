"""PNG plot of a bench report: latency distribution per run and end-to-end stage breakdown.

matplotlib is imported here only (``pip install 'unideploy[plot]'``).

Example:
    >>> from unideploy.tools.bench.plot import save_plot
    >>> save_plot(report, "bench.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from typing import Any

from unideploy.core.errors import BackendUnavailableError

STAGE_KEYS = ("read+decode", "preprocess", "inference", "postprocess")


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend, or raise naming the extra to install.

    Example:
        >>> plt = require_matplotlib()  # doctest: +SKIP
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendUnavailableError("--plot needs matplotlib, which is not installed; install it with: "
                                      "pip install 'unideploy[plot]'") from None
    return plt


def save_plot(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a PNG: left, latency distributions (box plots, ms) per run; right, end-to-end ms per image
    by stage (stacked) next to the measured wall time per image.

    Example:
        >>> save_plot(benchmark("m.onnx", data="images/"), "bench.png")  # doctest: +SKIP
    """
    plt = require_matplotlib()
    from unideploy.core.sinks import atomic_write_bytes

    labels, lats, stage_rows = [], [], []
    for run in report["runs"]:
        for b in run.get("batches", []):
            if b.get("skipped") or "pure" not in b:
                continue
            label = f"{run['backend']}\n{run['file']} b{b['batch']}"
            labels.append(label)
            lats.append(b["pure"].get("latencies_ms") or [b["pure"]["latency_ms"]["median_ms"]])
            e2e = b.get("e2e")
            if e2e:
                st = e2e["stages_ms"]
                stage_rows.append((label, [(st[k] or {}).get("mean", 0.0) for k in STAGE_KEYS],
                                   1e3 / e2e["images_per_s"] if e2e["images_per_s"] else 0.0))
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.5, 0.8 * len(labels) + 2)))
    ax = axes[0]
    if lats:
        ax.boxplot(lats, vert=False, showfliers=True, whis=(1, 99))
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_xlabel("latency per run (ms); whiskers p1-p99")
    ax.set_title("pure inference")
    ax = axes[1]
    if stage_rows:
        ys = range(len(stage_rows))
        left = [0.0] * len(stage_rows)
        for i, key in enumerate(STAGE_KEYS):
            vals = [r[1][i] for r in stage_rows]
            ax.barh([y - 0.15 for y in ys], vals, height=0.3, left=left, label=key)
            left = [a + v for a, v in zip(left, vals)]
        ax.barh([y + 0.15 for y in ys], [r[2] for r in stage_rows], height=0.3, color="black", label="wall per image")
        ax.set_yticks(list(ys), [r[0] for r in stage_rows], fontsize=8)
        ax.legend(fontsize=8)
        ax.set_xlabel("ms per image (stages overlap in the pipeline)")
    else:
        ax.text(0.5, 0.5, "no end-to-end run (use --data)", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title("end to end, by stage")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
