"""Plotly figures drawn from the views; sizes are divided by 2**30 and labelled GiB, nothing else is derived."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from ..units import GiB
from .serve import ServeView
from .views import DeviceMapView, Grid, PlanView, RunView

GIB_AXIS = "GiB (2^30 bytes)"

PHASE_COLORS = {"load": "#9e9e9e", "forward": "#4c78a8", "backward": "#f58518", "optimizer": "#54a24b",
                "prefill": "#b279a2", "decode": "#72b7b2"}
SERIES_COLORS = {"device_used_bytes": "#111111", "process_used_bytes": "#7f7f7f", "reserved_bytes": "#1f77b4",
                 "allocated_bytes": "#2ca02c", "rss_bytes": "#9467bd"}
#: reference lines: a counter's colour is its series' colour; measured solid, estimated dashed, capacity red dots
LINE_COLORS = {"peak_allocated_bytes": SERIES_COLORS["allocated_bytes"], "device_used_bytes": "#111111",
               "peak_rss_bytes": SERIES_COLORS["rss_bytes"], "capacity_bytes": "#d62728"}
LINE_DASH = {"measured": "solid", "estimated": "dash", "capacity": "dot"}
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d",
           "#bab0ac", "#1f77b4", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#e377c2")
FIT_COLORS = {True: "#54a24b", False: "#e45756", None: "#9e9e9e"}

# A small template: the figure JSON stays short and the look is the same on every page.
TEMPLATE = go.layout.Template(layout={
    "font": {"family": "system-ui, -apple-system, 'Segoe UI', sans-serif", "size": 12, "color": "#222"},
    "paper_bgcolor": "white", "plot_bgcolor": "white",
    "xaxis": {"gridcolor": "#eaeaea", "linecolor": "#999", "zeroline": False, "automargin": True},
    "yaxis": {"gridcolor": "#eaeaea", "linecolor": "#999", "zeroline": False, "automargin": True},
    "legend": {"bgcolor": "rgba(255,255,255,0.8)"},
    "hoverlabel": {"namelength": -1},
})

#: passed to Plotly.newPlot: no logo, resizes with the window
CONFIG: dict[str, Any] = {"displaylogo": False, "responsive": True}


def _gib(value: float | int | None) -> float | None:
    return None if value is None else value / GiB


def _layout(fig: go.Figure, title: str, height: int, **kwargs: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0, "xanchor": "left"}, height=height,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, **kwargs)
    return fig


def group_colors(names: list[str]) -> dict[str, str]:
    """A colour per component group (the part before ``/``), groups in sorted order."""
    groups = sorted({n.split("/", 1)[0] for n in names})
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}


# ------------------------------------------------------------------------------------------------ runs
def timeline(view: RunView) -> go.Figure:
    """Sampled memory over time, phase bands shaded behind, measured/estimated peaks and capacity as lines."""
    fig = go.Figure()
    for s in view.series:
        fig.add_trace(go.Scatter(
            x=view.t, y=[_gib(v) for v in s.values], name=s.label, mode="lines",
            line={"color": SERIES_COLORS.get(s.key, "#333"), "width": 1.6, "shape": "hv"},
            # host RSS is another memory than the GPU's: shown by default only on CPU runs
            visible=True if (s.key != "rss_bytes" or view.device == "cpu" or len(view.series) == 1) else "legendonly",
            hovertemplate="%{y:.3f} GiB<extra>" + s.label + "</extra>"))
    seen: set[str] = set()
    for p in view.phases:
        fig.add_shape(type="rect", xref="x", yref="paper", x0=p.t_start, x1=p.t_end, y0=0, y1=1,
                      fillcolor=PHASE_COLORS.get(p.name, "#bbbbbb"), opacity=0.14, line={"width": 0},
                      layer="below", name=f"phase: {p.name}", legendgroup=f"phase-{p.name}",
                      showlegend=p.name not in seen)
        seen.add(p.name)
    for line in view.lines:
        fig.add_shape(type="line", xref="paper", yref="y", x0=0, x1=1, y0=_gib(line.value_bytes),
                      y1=_gib(line.value_bytes),
                      line={"color": LINE_COLORS.get(line.key, "#555"), "dash": LINE_DASH[line.style],
                            "width": 2 if line.style == "capacity" else 1.3},
                      name=f"{line.label}: {line.value_bytes / GiB:.2f} GiB", showlegend=True)
    if view.oom is not None and view.oom.t is not None:
        where = " ".join(x for x in (view.oom.phase, f"step {view.oom.step}" if view.oom.step is not None else None)
                         if x)
        fig.add_shape(type="line", xref="x", yref="paper", x0=view.oom.t, x1=view.oom.t, y0=0, y1=1,
                      line={"color": "#d62728", "width": 3}, name=f"OOM {where}".rstrip(), showlegend=True)
        fig.add_annotation(x=view.oom.t, y=1, xref="x", yref="paper", text="<b>OOM</b>", showarrow=False,
                           xanchor="right", yanchor="top", font={"color": "#d62728"})
    fig.update_xaxes(title_text="time since start (s)")
    fig.update_yaxes(title_text=f"memory, {GIB_AXIS}", rangemode="tozero")
    return _layout(fig, "Memory timeline", 520, hovermode="x unified",
                   legend={"orientation": "h", "x": 0, "y": -0.16, "yanchor": "top", "font": {"size": 11}})


def counters_chart(view: RunView) -> go.Figure:
    """Estimated and measured value of each counter, side by side, the saved error % above the pair."""
    labels = [c.label for c in view.counters]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=[_gib(c.estimated_bytes) for c in view.counters], name="estimated",
                         marker_color="#9ecae9", hovertemplate="%{y:.3f} GiB<extra>estimated</extra>"))
    fig.add_trace(go.Bar(
        x=labels, y=[_gib(c.measured_bytes) for c in view.counters], name="measured", marker_color="#4c78a8",
        text=[f"error {c.error_pct:+.1f}%" if c.error_pct is not None else "error n/a" for c in view.counters],
        textposition="outside", cliponaxis=False, hovertemplate="%{y:.3f} GiB<extra>measured</extra>"))
    fig.update_yaxes(title_text=GIB_AXIS, rangemode="tozero")
    return _layout(fig, "Estimate vs measured, by counter (error % as recorded)", 360, barmode="group")


def components_chart(view: RunView) -> go.Figure:
    """The estimate's components stacked in one bar, the measured totals beside it."""
    est_row = "estimate (components at peak)"
    colors = group_colors([n for n, _ in view.components])
    fig = go.Figure()
    for name, size in view.components:
        group = name.split("/", 1)[0]
        fig.add_trace(go.Bar(
            y=[est_row], x=[_gib(size)], name=name, orientation="h", marker_color=colors[group],
            marker_line={"color": "white", "width": 1},
            hovertemplate="%{x:.3f} GiB<extra>" + name + "</extra>"))
    for label, size in view.measured_totals:
        fig.add_trace(go.Bar(y=[label], x=[_gib(size)], name=label, orientation="h", marker_color="#333333",
                             text=[f"{size / GiB:.2f} GiB"], textposition="inside",
                             hovertemplate="%{x:.3f} GiB<extra>" + label + "</extra>"))
    fig.update_xaxes(title_text=GIB_AXIS)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Estimate by component vs measured totals",
                   240 + 40 * (1 + len(view.measured_totals)) + 10 * len(view.components), barmode="stack",
                   legend={"orientation": "h", "x": 0, "y": -0.25, "yanchor": "top", "font": {"size": 11}})


# ------------------------------------------------------------------------------------------------ plan
def breakdown_chart(view: PlanView) -> go.Figure:
    """One bar per component of the estimate, coloured by group."""
    colors = group_colors([n for n, _ in view.components])
    names = [n for n, _ in view.components]
    fig = go.Figure(go.Bar(
        y=names, x=[_gib(b) for _, b in view.components], orientation="h",
        marker_color=[colors[n.split("/", 1)[0]] for n in names],
        text=[f"{b / GiB:.2f} GiB" for _, b in view.components], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.3f} GiB<extra></extra>"))
    fig.update_xaxes(title_text=GIB_AXIS)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Breakdown by component (live at the peak)", 140 + 26 * len(names), showlegend=False)


def ladder_chart(view: PlanView) -> go.Figure:
    """Each card's capacity with the plan's device-used peak over it; green fits, red does not."""
    gpus = [r.gpu for r in view.ladder]
    fig = go.Figure()
    fig.add_trace(go.Bar(y=gpus, x=[_gib(r.capacity_bytes) for r in view.ladder], orientation="h",
                         name="capacity", marker_color="#dddddd", width=0.8,
                         hovertemplate="%{y}: %{x:.2f} GiB capacity<extra></extra>"))
    for fits, label in ((True, "peak, fits"), (False, "peak, does not fit"), (None, "peak")):
        rungs = [r for r in view.ladder if r.fits is fits]
        if not rungs:
            continue
        fig.add_trace(go.Bar(
            y=[r.gpu for r in rungs], x=[_gib(r.device_used_bytes) for r in rungs], orientation="h",
            name=f"{label} (device used)", marker_color=FIT_COLORS[fits], width=0.45,
            text=[f"headroom {r.headroom_bytes / GiB:+.2f} GiB" if r.headroom_bytes is not None else ""
                  for r in rungs],
            textposition="outside", cliponaxis=False,
            hovertemplate="%{y}: %{x:.2f} GiB used<extra></extra>"))
    fig.update_xaxes(title_text=GIB_AXIS)
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=gpus)
    return _layout(fig, "GPU ladder: capacity vs peak (device used)", 160 + 30 * len(gpus), barmode="overlay")


def device_map_chart(view: DeviceMapView) -> go.Figure:
    """One stacked bar per GPU of a ``--device-map`` split (weights, its layers' KV cache, the working set), its
    reserved and nvidia-smi figures as markers, and the capacity each GPU is judged against as a line."""
    gpus = [f"GPU {r.device}" + (" (lm_head)" if r.holds_lm_head else "") for r in view.rows]
    fig = go.Figure()
    for key, label, color in (("weights_bytes", "weights", PALETTE[0]), ("kv_cache_bytes", "KV cache", PALETTE[1]),
                              ("working_set_bytes", "working set (+ logits)", PALETTE[2])):
        fig.add_trace(go.Bar(y=gpus, x=[_gib(getattr(r, key)) for r in view.rows], orientation="h", name=label,
                             marker_color=color, hovertemplate=f"%{{y}}: %{{x:.3f}} GiB {label}<extra></extra>"))
    for key, label, symbol in (("peak_allocated_bytes", "peak allocated", "line-ns-open"),
                               ("peak_reserved_bytes", "peak reserved", "diamond"),
                               ("device_used_bytes", "device used (nvidia-smi)", "x")):
        fig.add_trace(go.Scatter(y=gpus, x=[_gib(getattr(r, key)) for r in view.rows], mode="markers", name=label,
                                 marker={"symbol": symbol, "size": 12, "color": "#111111",
                                         "line": {"width": 2, "color": "#111111"}},
                                 hovertemplate=f"%{{y}}: %{{x:.3f}} GiB {label}<extra></extra>"))
    if view.capacity_bytes is not None:
        fig.add_vline(x=_gib(view.capacity_bytes), line={"color": LINE_COLORS["capacity_bytes"], "dash": "dot"},
                      annotation_text=f"capacity {view.gpu or ''}".rstrip(), annotation_position="top")
    fig.update_xaxes(title_text=GIB_AXIS)
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=gpus)
    _layout(fig, "Each GPU of the split at its peak", 260 + 40 * len(gpus), barmode="stack",
            legend={"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top", "traceorder": "normal"})
    fig.update_layout(margin={"b": 120})
    return fig


def _hatch(xi: int, yi: int) -> str:
    """SVG path of a cell's outline and diagonal hatching; cell (xi, yi) spans ±0.5 around its centre."""
    x0, y0 = xi - 0.5, yi - 0.5
    out = [f"M{x0},{y0}H{x0 + 1}V{y0 + 1}H{x0}Z"]
    for c in (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75):       # lines u - v = c across the unit cell
        (u0, v0), (u1, v1) = ((c, 0.0), (1.0, 1.0 - c)) if c >= 0 else ((0.0, -c), (1.0 + c, 1.0))
        out.append(f"M{x0 + u0},{y0 + v0}L{x0 + u1},{y0 + v1}")
    return "".join(out)


def grid_chart(grid: Grid, capacity: tuple[str, int | float] | None,
               chosen: tuple[int, int] | None = None) -> go.Figure:
    """Peak (device used) over batch × seq; cells over the chosen card's capacity outlined and hatched.

    Comparing a cell with the capacity is the one decision made here: it picks which cells to hatch.
    """
    xs = list(range(len(grid.seq)))
    ys = list(range(len(grid.batch)))
    z = [[_gib(v) for v in row] for row in grid.device_used_bytes]
    fig = go.Figure(go.Heatmap(
        x=xs, y=ys, z=z, colorscale="Blues", colorbar={"title": {"text": "GiB"}},
        texttemplate="%{z:.1f}", hovertemplate="batch %{customdata[0]} × seq %{customdata[1]}: "
                                                "%{z:.2f} GiB<extra></extra>",
        customdata=[[[b, s] for s in grid.seq] for b in grid.batch], name="device used"))
    if capacity is not None:
        gpu, cap = capacity
        path = "".join(_hatch(xi, yi) for yi, row in enumerate(grid.device_used_bytes)
                       for xi, v in enumerate(row) if v is not None and v > cap)
        if path:
            fig.add_shape(type="path", path=path, xref="x", yref="y", line={"color": "#d62728", "width": 1.5},
                          name=f"over {gpu} capacity ({cap / GiB:.2f} GiB)", showlegend=True)
    if chosen is not None:
        bi, si = chosen
        fig.add_shape(type="rect", xref="x", yref="y", x0=si - 0.46, x1=si + 0.46, y0=bi - 0.42, y1=bi + 0.42,
                      line={"color": "#111111", "width": 3}, name="this plan's setup", showlegend=True)
    fig.update_xaxes(title_text="sequence length (tokens)", tickmode="array", tickvals=xs,
                     ticktext=[str(s) for s in grid.seq], showgrid=False)
    fig.update_yaxes(title_text="micro-batch size", tickmode="array", tickvals=ys,
                     ticktext=[str(b) for b in grid.batch], showgrid=False)
    title = "Peak (device used, GiB) over batch × seq"
    if capacity is not None:
        title += f"; hatched: over {capacity[0]} capacity {capacity[1] / GiB:.2f} GiB"
    return _layout(fig, title, 160 + 42 * len(ys), legend={"orientation": "h", "y": -0.25})


# ----------------------------------------------------------------------------------------------- serve
SEGMENT_COLORS = {"weights": "#4c78a8", "overhead": "#9e9e9e", "activations": "#f58518", "kv_cache": "#54a24b",
                  "kv_cache/remainder": "#b7dfb0", "outside": "#e5e5e5"}


def budget_chart(view: ServeView) -> go.Figure:
    """The card as one stacked bar from 0 to its total, one segment per part of the engine's accounting."""
    fig = go.Figure()
    for i, (name, size) in enumerate(view.segments):
        group = name.split("/", 1)[0]
        fig.add_trace(go.Bar(y=["per GPU"], x=[size / GiB], orientation="h", name=name,
                             marker_color=SEGMENT_COLORS.get(name) or SEGMENT_COLORS.get(group)
                             or PALETTE[i % len(PALETTE)],
                             hovertemplate=f"{name}: %{{x:.3f}} GiB<extra></extra>"))
    fig.update_xaxes(title_text=GIB_AXIS)
    _layout(fig, "The card, as the engine divides it", 360, barmode="stack",
            legend={"orientation": "h", "x": 0, "y": -0.35, "yanchor": "top", "font": {"size": 11},
                    "traceorder": "normal"})
    fig.update_layout(margin={"b": 150})
    return fig
