"""Charts drawn on the server as SVG: no script, nothing fetched, readable without colour
(every bar carries its number and a title for screen readers and hover)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")


def bars(title: str, values: Mapping[str, float], *, unit: str = "") -> Markup:
    """Horizontal bars, largest first as given."""
    if not values:
        return _empty(title)
    width, label_w, row_h = 440, 170, 22
    top = max(values.values()) or 1
    height = row_h * len(values) + 8
    parts = [_open(title, width, height)]
    for index, (name, value) in enumerate(values.items()):
        y = 4 + index * row_h
        length = (width - label_w - 60) * (value / top)
        shown = f"{value:g}{unit}"
        parts.append(
            f"<g><title>{escape(name)}: {escape(shown)}</title>"
            f'<text x="{label_w - 6}" y="{y + 15}" class="label" text-anchor="end">'
            f"{escape(_short(name))}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_h - 8}" '
            f'fill="{PALETTE[0]}"/>'
            f'<text x="{label_w + length + 4:.1f}" y="{y + 15}" class="value">{escape(shown)}'
            "</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it is escaped above


def columns(title: str, buckets: Sequence[str], series: Mapping[str, Sequence[float]]) -> Markup:
    """Stacked columns over ``buckets`` (days), one colour per series, with a legend."""
    if not buckets or not any(any(values) for values in series.values()):
        return _empty(title)
    width, height, left, bottom, legend_h = 560, 220, 36, 40, 18 * ((len(series) + 2) // 3)
    plot_h = height - bottom - 8
    totals = [sum(values[i] for values in series.values()) for i in range(len(buckets))]
    top = max(totals) or 1
    step = (width - left - 8) / len(buckets)
    parts = [_open(title, width, height + legend_h)]
    parts.append(
        f'<text x="{left - 4}" y="14" class="axis" text-anchor="end">{top:g}</text>'
        f'<line x1="{left}" y1="{8 + plot_h}" x2="{width - 8}" y2="{8 + plot_h}" class="axis"/>'
    )
    for i, bucket in enumerate(buckets):
        x = left + i * step + 2
        y = float(8 + plot_h)
        for index, (name, values) in enumerate(series.items()):
            value = values[i]
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 4, 1):.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[index % len(PALETTE)]}">'
                f"<title>{escape(bucket)} · {escape(name)}: {value:g}</title></rect>"
            )
        if len(buckets) <= 14 or i % 2 == 0:
            parts.append(
                f'<text x="{x + step / 2 - 2:.1f}" y="{height - bottom + 18}" class="axis" '
                f'text-anchor="middle">{escape(bucket[5:] if len(bucket) == 10 else bucket)}'
                "</text>"
            )
    for index, name in enumerate(series):
        lx = left + (index % 3) * 180
        ly = height + (index // 3) * 18
        parts.append(
            f'<rect x="{lx}" y="{ly - 10}" width="10" height="10" '
            f'fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{lx + 14}" y="{ly}" class="label">{escape(_short(name))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it is escaped above


def _open(title: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} '
        f'{height}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )


def _empty(title: str) -> Markup:
    return Markup(  # noqa: S704 - the only text is escaped
        f'<p class="empty" aria-label="{escape(title)}">Nothing in this window.</p>'
    )


def _short(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
