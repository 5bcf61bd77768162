"""Figures as compact HTML: a grid of labelled values that wraps to the width it is given, so a phone shows the
Training page's seven figures in three short rows instead of seven full-width ones, and no value is cut off."""
from __future__ import annotations

import html

GRID_STYLE = ("display:grid;grid-template-columns:repeat(auto-fill,minmax(108px,1fr));gap:0.35rem 0.9rem;"
              "margin:0.25rem 0 0.6rem 0")
LABEL_STYLE = "font-size:0.78rem;opacity:0.7;white-space:nowrap"
VALUE_STYLE = "font-size:1.15rem;font-weight:600;line-height:1.3;overflow-wrap:anywhere"
NOTE_STYLE = "font-size:0.75rem;opacity:0.7"


def metric_grid_html(items: list[tuple[str, str, str | None, str | None]]) -> str:
    """One cell per (label, value, note, tooltip); each text is escaped, a missing note or tooltip is left out."""
    cells = []
    for label, value, note, tooltip in items:
        title = f' title="{html.escape(tooltip, quote=True)}"' if tooltip else ""
        extra = f'<div style="{NOTE_STYLE}">{html.escape(note)}</div>' if note else ""
        cells.append(f'<div class="fmnist-figure"{title}><div style="{LABEL_STYLE}">{html.escape(label)}</div>'
                     f'<div style="{VALUE_STYLE}">{html.escape(value)}</div>{extra}</div>')
    return f'<div class="fmnist-figures" style="{GRID_STYLE}">{"".join(cells)}</div>'
