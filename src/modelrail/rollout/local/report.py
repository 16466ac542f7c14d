"""The rollout report: one self-contained HTML page (inline SVG, no scripts, no network).

Per rollout: the versions and their sha256, the verdict, charts over time of the canary
weight, request rate, error rate and p99 latency for stable and canary (from the analysis
intervals in series.jsonl), the model-gate disagreement rate (and the shadow phase's, with
its evidence: requests mirrored, pairs compared, the disagreement's bound, drops) and the
decision points (from the status history) drawn on every chart, then the decision table.

Called by `modelrail rollout report` and the demo. Every string taken from the state files
is HTML-escaped (`_e`) and every file is validated as it is read: a rollout whose request or
status cannot be read gets a section saying which file and why instead of its charts, and
series or audit lines of the wrong shape are skipped (and counted). Written durably.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from modelrail.durable import atomic_write_text
from modelrail.errors import CorruptStateError
from modelrail.rollout.core.analysis import describe_shadow, shadow_summary
from modelrail.rollout.local.store import EnvStore, HistoryEntry, RolloutFiles, read_jsonl

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 170, 56, 12, 18, 28
COLORS = {"stable": "#2563eb", "canary": "#ea580c", "weight": "#16a34a", "gate": "#9333ea"}
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#111;max-width:1360px}
h1{font-size:22px}h2{font-size:18px;margin-top:36px;border-top:1px solid #ddd;padding-top:16px}
.ok{color:#15803d}.bad{color:#b91c1c}.grid{display:flex;flex-wrap:wrap;gap:8px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}svg text{font:11px system-ui,sans-serif}
code{font-size:12px}"""


def write_report(out: Path, rollouts: list[tuple[EnvStore, RolloutFiles]], *,
                 title: str) -> Path:
    atomic_write_text(out, render(rollouts, title=title))
    return out


def render(rollouts: list[tuple[EnvStore, RolloutFiles]], *, title: str) -> str:
    sections = [_section_or_problem(store, files) for store, files in rollouts]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
            f"<p>Generated {generated}. Colours: <b style='color:{COLORS['stable']}'>stable"
            f"</b>, <b style='color:{COLORS['canary']}'>canary</b>; dashed lines are "
            f"decisions.</p>{''.join(sections)}</body></html>")


class _Line(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class _Traffic(_Line):
    rps: float | None = None
    error_rate: float | None = None
    p99_ms: float | None = None


class _Gate(_Line):
    compared: int
    disagreements: int


class _Load(_Line):
    requests: int
    failures: int


class _Shadow(_Line):
    pairs: int
    disagreements: int
    dropped: int = 0


L = TypeVar("L", bound=_Line)


class _SeriesLine(_Line):
    """One analysis interval of series.jsonl (the fields the report draws)."""

    at: float
    stable: _Traffic | None = None
    canary: _Traffic | None = None
    gate: _Gate | None = None
    load: _Load | None = None
    shadow: _Shadow | None = None


class _Version(_Line):
    version: str
    sha256: str | None = None


class _AuditLine(_Line):
    rollout: str
    stable: _Version
    canary: _Version


def _valid(model: type[L], records: list[dict[str, Any]]) -> tuple[list[L], int]:
    """The records of the right shape, and how many were not."""
    out: list[L] = []
    for r in records:
        try:
            out.append(model.model_validate(r))
        except ValidationError:
            continue
    return out, len(records) - len(out)


def _section_or_problem(store: EnvStore, files: RolloutFiles) -> str:
    """The rollout's section, or, if one of its files cannot be read, what is wrong."""
    problem = files.problem()
    if problem is None:
        try:
            return _section(store, files)
        except CorruptStateError as exc:  # changed while we read it
            problem = exc
    return (f"<h2>{_e(files.id)} <span class='bad'>unreadable</span></h2>"
            f"<p>{_e(problem)}</p>")


def _section(store: EnvStore, files: RolloutFiles) -> str:
    spec = files.read_request().spec
    saved = files.read_status()
    st = saved.status if saved else None
    series, bad_series = _valid(_SeriesLine, read_jsonl(files.series))
    audit = [a for a in _valid(_AuditLine, read_jsonl(store.audit_file))[0]
             if a.rollout == files.id]
    digests: dict[str, str | None] = {}
    if audit:
        digests = {audit[-1].stable.version: audit[-1].stable.sha256,
                   audit[-1].canary.version: audit[-1].canary.sha256}
    phase = st.phase.value if st else "Pending"
    cls = "ok" if phase == "Succeeded" else "bad" if phase in ("RolledBack", "Failed",
                                                             "Aborted") else ""
    t0 = (st.started_at if st and st.started_at else
          series[0].at if series else time.time())
    history = [HistoryEntry.model_validate(h) for h in st.history] if st else []
    marks = [(h.at - t0, f"{h.action} {h.weight}%") for h in history]
    t = [s.at - t0 for s in series]

    def track(name: str, key: str, scale: float = 1.0) -> list[tuple[float, float | None]]:
        out = []
        for x, s in zip(t, series, strict=True):
            traffic = s.stable if name == "stable" else s.canary
            v = getattr(traffic, key) if traffic else None
            out.append((x, None if v is None else float(v) * scale))
        return out

    weights = _steps([(h.at - t0, float(h.weight)) for h in history
                      if h.action in ("set_weight", "rollback", "promote")],
                     end=max([*t, *(m[0] for m in marks), 1.0]))
    gate = [(x, (s.gate.disagreements / s.gate.compared * 100)
             if s.gate and s.gate.compared else None)
            for x, s in zip(t, series, strict=True)]
    charts = [
        _chart("canary weight (%)", {"weight": weights}, marks, y_max=100),
        _chart("request rate (req/s)", {"stable": track("stable", "rps"),
                                        "canary": track("canary", "rps")}, marks),
        _chart("error rate (%)", {"stable": track("stable", "error_rate", 100),
                                  "canary": track("canary", "error_rate", 100)}, marks),
        _chart("p99 latency (ms)", {"stable": track("stable", "p99_ms"),
                                    "canary": track("canary", "p99_ms")}, marks),
        _chart("model gate: answers that differ (%)", {"gate": gate}, marks),
    ]
    shadow = [(x, (s.shadow.disagreements / s.shadow.pairs * 100)
               if s.shadow and s.shadow.pairs else None)
              for x, s in zip(t, series, strict=True)]
    if spec.shadow is not None:
        charts.append(_chart("shadow phase: mirrored answers that differ (%)",
                             {"gate": shadow}, marks))
    shadow_line = describe_shadow(shadow_summary(st.shadow if st else None))
    shadow_text = ("" if spec.shadow is None else
                   f"<p>Shadow phase ({_e(f'{spec.shadow.percent:g}')}% of stable's "
                   f"requests mirrored, {_e(spec.shadow.min_pairs)} pairs needed): "
                   f"{_e(shadow_line or 'not reached')}.</p>")
    rows = "".join(
        f"<tr><td>{h.at - t0:.1f}s</td><td>{_e(h.from_.value)} → {_e(h.to.value)}</td>"
        f"<td>{_e(h.action)}</td><td>{_e(h.weight)}%</td><td>{_e(h.message)}</td>"
        f"<td>{_e(h.verdict or '')}</td></tr>" for h in history)
    gates = [s.gate for s in series if s.gate]
    gate_total = sum(g.compared for g in gates)
    gate_diff = sum(g.disagreements for g in gates)
    load = [s.load for s in series if s.load]
    model = spec.model
    skipped = (f"<p class='bad'>{bad_series} line(s) of {_e(files.series)} had the wrong "
               "shape and were left out.</p>" if bad_series else "")
    return (
        f"<h2>{_e(files.id)}: {_e(model)} {_e(spec.stable_version)} → "
        f"{_e(spec.canary_version)} <span class='{cls}'>{_e(phase)}</span></h2>"
        f"<p>Environment <b>{_e(store.env)}</b>; steps {_e(list(spec.steps))} held "
        f"{_e(f'{spec.step_seconds:g}')}s each; {_e(st.message if st else '')}</p>"
        f"<p>stable <code>{_e(model)}:{_e(spec.stable_version)} sha256 "
        f"{_e(digests.get(spec.stable_version) or '?')}</code><br>canary "
        f"<code>{_e(model)}:{_e(spec.canary_version)} sha256 "
        f"{_e(digests.get(spec.canary_version) or '?')}</code></p>"
        f"<p>Model gate over the rollout: {gate_diff} of {gate_total} replayed answers "
        f"differed ({(gate_diff / gate_total * 100) if gate_total else 0:.1f}%, limit "
        f"{spec.thresholds.max_label_disagreement * 100:.1f}%). Locust: "
        f"{sum(x.requests for x in load)} requests, {sum(x.failures for x in load)} "
        f"failed, over {len(load)} analysis intervals.</p>{shadow_text}{skipped}"
        f"<div class='grid'>{''.join(charts)}</div>"
        f"<table><tr><th>t</th><th>phase</th><th>action</th><th>weight</th><th>message</th>"
        f"<th>verdict</th></tr>{rows}</table>")


def _steps(points: list[tuple[float, float]], *, end: float) -> list[tuple[float, float | None]]:
    """A step function: each weight holds until the next decision."""
    out: list[tuple[float, float | None]] = [(0.0, 0.0)]
    for x, y in points:
        out += [(x, out[-1][1]), (x, float(y))]
    out.append((end, out[-1][1]))
    return out


def _chart(title: str, lines: dict[str, list[tuple[float, float | None]]],
           marks: list[tuple[float, str]], *, y_max: float | None = None) -> str:
    xs = [x for pts in lines.values() for x, _ in pts] + [m[0] for m in marks] + [1.0]
    ys = [y for pts in lines.values() for _, y in pts if y is not None]
    x_max = max(xs)
    top = y_max if y_max is not None else max([*ys, 0.0]) * 1.15 or 1.0
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + x / x_max * iw

    def py(y: float) -> float:
        return PAD_T + ih - min(y, top) / top * ih

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
             f"role='img' aria-label='{_e(title)}'>",
             f"<text x='{PAD_L}' y='12' font-weight='bold'>{_e(title)}</text>",
             f"<rect x='{PAD_L}' y='{PAD_T}' width='{iw}' height='{ih}' fill='none' "
             "stroke='#ccc'/>"]
    for frac in (0.0, 0.5, 1.0):
        y = top * frac
        parts.append(f"<text x='{PAD_L - 4}' y='{py(y) + 4:.1f}' text-anchor='end'>"
                     f"{_fmt(y)}</text>")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f"<text x='{px(x_max * frac):.1f}' y='{H - 10}' text-anchor='middle'>"
                     f"{x_max * frac:.0f}s</text>")
    for x, label in marks:
        parts.append(f"<line x1='{px(x):.1f}' x2='{px(x):.1f}' y1='{PAD_T}' "
                     f"y2='{PAD_T + ih}' stroke='#999' stroke-dasharray='3,3'>"
                     f"<title>{_e(label)} at {x:.1f}s</title></line>")
    for name, pts in lines.items():
        segment: list[str] = []
        ends: list[tuple[float, float | None]] = [*pts, (0.0, None)]
        for x, yo in ends:
            if yo is None:
                if segment:
                    parts.append(f"<polyline fill='none' stroke='{COLORS[name]}' "
                                 f"stroke-width='2' points='{' '.join(segment)}'/>")
                segment = []
            else:
                segment.append(f"{px(x):.1f},{py(yo):.1f}")
        for x, yv in pts:
            if yv is not None and len(pts) < 80:
                parts.append(f"<circle cx='{px(x):.1f}' cy='{py(yv):.1f}' r='2' "
                             f"fill='{COLORS[name]}'><title>{name} {_fmt(yv)} at {x:.1f}s"
                             "</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.2f}".rstrip("0").rstrip(".") or "0"


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)
