"""Human-readable report of a :class:`~unideploy.tools.compare.CompareResult` (the JSON form is ``to_dict``).

This module imports nothing from the rest of ``compare``: ``CompareResult.table()`` calls it, so the result types
stay below the report and no import runs in a circle.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["format_report", "render_table"]


def _g(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.{digits}g}"
    return str(v)


def _cos(v: Any) -> str:
    return "-" if v is None or v != v else f"{v:.6f}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned first column, right-aligned others, padded to the widest cell.

    Example:
        >>> print("\\n".join(render_table(["a", "bb"], [["x", "1"]], indent="")))
        a  bb
        x   1
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def format_report(r: Any) -> str:
    """The report of a :class:`~unideploy.tools.compare.CompareResult` as printed by ``unideploy compare``:
    settings, tensor table, task table, checks, verdict."""
    th = r.thresholds
    lines = [f"reference: {r.ref}", f"candidate: {r.candidate}",
             f"inputs:    {r.samples} image(s) from {r.source}; level {r.level}"]
    if r.level in ("all", "tensor"):
        lines.append("")
        prec = getattr(r, "precision", "fp32")
        lines.append(f"tensor level (same preprocessed input to both; atol {th.atol:g}, rtol {th.rtol:g} for "
                     f"{prec} compute; outputs matched by {r.pairing or '-'})")
        if r.tensors:
            rows = []
            for t in r.tensors:
                if t.error:
                    rows.append([t.name, "x".join(map(str, t.shape)) or "-", t.error] + [""] * 9)
                    continue
                rows.append([t.name, "x".join(map(str, t.shape)), _cos(t.cosine), _cos(t.cosine_min), _g(t.max_abs),
                             _g(t.mean_abs), _g(t.median_abs), _g(t.max_rel), _g(t.mean_rel), _g(t.median_rel),
                             f"{t.fail_pct:.3g}", _g(t.ref_absmax)])
            lines += render_table(["output", "shape", "cosine", "cos min", "max abs", "mean abs", "med abs",
                                   "max rel", "mean rel", "med rel", "fail %", "|ref| max"], rows)
    d = r.detection
    if d is not None:
        lines.append("")
        lines.append(f"detection level (conf > {d.conf:g}, matched by class and IoU >= {d.iou:g}; "
                     f"'crossed': matched, but the score crossed conf by less than {d.margin:g} down (v) or up (^))")
        lines += render_table(
            ["images", "ref boxes", "cand boxes", "matched", "crossed v/^", "missed", "extra", "mean IoU",
             "shift px mean", "shift px max", "score d mean", "score d max"],
            [[str(d.images), str(d.ref_boxes), str(d.cand_boxes), str(d.matched), f"{d.crossed_down}/{d.crossed_up}",
              f"{d.missed} ({100 * d.missed_frac:.1f}%)", f"{d.extra} ({100 * d.extra_frac:.1f}%)", _g(d.mean_iou, 4),
              _g(d.shift_px_mean), _g(d.shift_px_max), _g(d.score_delta_mean), _g(d.score_delta_max)]])
        if d.worst:
            lines.append("  worst images:")
            lines += render_table(
                ["image", "ref", "cand", "matched", "crossed v/^", "missed", "extra", "shift px max", "score d max"],
                [[w.name, str(w.ref_boxes), str(w.cand_boxes), str(w.matched), f"{w.crossed_down}/{w.crossed_up}",
                  str(w.missed), str(w.extra),
                  _g(w.max_shift_px), _g(w.max_score_delta)] for w in d.worst], indent="    ")
    t = getattr(r, "instances", None)
    if t is not None and t.kind and t.pairs:
        lines.append("")
        heads = {"segment": (["pairs", "mask IoU mean", "mask IoU p5", "mask IoU min"],
                             [t.mask_iou_mean, t.mask_iou_p5, t.mask_iou_min]),
                 "pose": (["pairs", "kpt px mean", "kpt px max", "OKS mean", "OKS min"],
                          [t.kpt_px_mean, t.kpt_px_max, t.oks_mean, t.oks_min]),
                 "obb": (["pairs", "rot IoU mean", "rot IoU min", "angle deg mean", "angle deg max"],
                         [t.rotated_iou_mean, t.rotated_iou_min, t.angle_deg_mean, t.angle_deg_max])}[t.kind]
        lines.append(f"{t.kind} level (the matched instances' {'masks' if t.kind == 'segment' else 'keypoints' if t.kind == 'pose' else 'rotated boxes'})")
        lines += render_table(heads[0], [[str(t.pairs)] + ["-" if v is None else _g(v, 4) for v in heads[1]]])
    c = r.classification
    if c is not None:
        lines.append("")
        lines.append("classification level")
        lines += render_table(["images", "top-1 agreement", "top-5 overlap", "prob d mean", "prob d max"],
                              [[str(c.images), f"{100 * c.top1_agreement:.1f}%", f"{100 * c.top5_overlap:.1f}%",
                                _g(c.prob_delta_mean), _g(c.prob_delta_max)]])
        for dis in c.disagreements[:5]:
            ref, cand = dis["ref"], dis["cand"]
            lines.append(f"    {dis['name']}: reference class {ref['class_id']} ({ref['confidence']:.3f}), "
                         f"candidate class {cand['class_id']} ({cand['confidence']:.3f})")
    L = r.layers
    if L is not None:
        lines.append("")
        if L.skipped:
            lines.append(f"layers: not compared ({L.skipped})")
        else:
            f = L.first_diverging
            lines.append(f"layers: {L.compared} intermediate tensors compared; first diverging: "
                         + (f"{f.tensor} (node {f.node}, {f.op}; cosine {_cos(f.stats.cosine_min)}, "
                            f"max abs {_g(f.stats.max_abs)}, fail {_g(f.stats.fail_pct)}%)" if f else "none"))
            worst = L.worst(5)
            if worst:
                lines += render_table(["tensor (lowest cosine)", "op", "cosine", "max abs", "fail %"],
                                      [[w.tensor, w.op, _cos(w.stats.cosine_min), _g(w.stats.max_abs),
                                        _g(w.stats.fail_pct)] for w in worst])
    if r.notes:
        lines.append("")
        lines += [f"note: {n}" for n in r.notes]
    if r.skipped:
        lines += [f"skipped {name}: {why}" for name, why in r.skipped[:10]]
    lines.append("")
    lines.append(f"checks (tensor limits for {getattr(r, 'precision', 'fp32')} compute):"
                 if r.level in ("all", "tensor") else "checks:")
    for ch in r.checks:
        lines.append(f"  {'PASS' if ch.passed else 'FAIL'}  {ch.describe()}")
    n_fail = len(r.failures)
    verdict = "PASS" if r.passed else ("FAIL (nothing was checked)" if not r.checks else
                                       f"FAIL ({n_fail} of {len(r.checks)} checks failed)")
    lines.append(f"result: {verdict}")
    return "\n".join(lines)
