"""Bar charts as inline SVG, drawn on the server: no JavaScript, no plotting library in the page."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

ROW_HEIGHT = 18
LABEL_WIDTH = 230
BAR_WIDTH = 360


def bar_chart(
    rows: Sequence[tuple[str, float]], title: str, value_format: str = "{:g}", top: float | None = None
) -> Markup:
    """One horizontal bar per row, longest first as given; every label is escaped (names come from files)."""
    if not rows:
        return Markup("")
    largest = top if top is not None else max(value for _, value in rows) or 1.0
    height = ROW_HEIGHT * len(rows) + 8
    width = LABEL_WIDTH + BAR_WIDTH + 70
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for number, (label, value) in enumerate(rows):
        y = 4 + number * ROW_HEIGHT
        length = max(1.0, BAR_WIDTH * max(value, 0.0) / largest)
        text = label if len(label) <= 34 else label[:33] + "…"
        parts.append(
            f"<g><title>{escape(label)}: {escape(value_format.format(value))}</title>"
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 13}" text-anchor="end">{escape(text)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y + 2}" width="{length:.1f}" height="{ROW_HEIGHT - 5}"></rect>'
            f'<text x="{LABEL_WIDTH + length + 4:.1f}" y="{y + 13}">{escape(value_format.format(value))}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
