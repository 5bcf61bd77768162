"""The Training page's compact figure grid (fmnist_jax.studio.figures): every figure shown, each text escaped."""
from __future__ import annotations

import re

from fmnist_jax.studio.figures import metric_grid_html


def test_every_figure_is_a_cell_with_its_label_value_note_and_tooltip() -> None:
    out = metric_grid_html([("Images/s", "1,868", None, None), ("Best epoch", "7", "91.20% val.", "highest so far")])
    cells = re.findall(r'<div class="fmnist-figure"( title="[^"]*")?>', out)
    assert len(cells) == 2 and cells[0] == "" and cells[1] == ' title="highest so far"'
    assert out.index("Images/s") < out.index("1,868") < out.index("Best epoch") < out.index("91.20% val.")
    assert "auto-fill" in out  # the grid wraps to the width it gets: three to a row on a phone, seven on a desktop


def test_texts_are_escaped_so_a_run_name_or_device_string_cannot_inject_markup() -> None:
    out = metric_grid_html([("Device", "<script>x</script>", "a & b", 'say "hi"')])
    assert "<script>" not in out and "&lt;script&gt;x&lt;/script&gt;" in out
    assert "a &amp; b" in out and 'title="say &quot;hi&quot;"' in out
