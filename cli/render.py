"""Rendering pieces every report command uses: compact tables, inline log-spectrum bars, coloured IA, the
one-line run header and the verdict block."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dcollapse.cli.common import out
from dcollapse.reports.runs import model_line

BLOCKS = "▁▂▃▄▅▆▇█"
BAR_DECADES = 4  # the inline bar spans s_i / s_1 from 1e-4 (lowest block) to 1 (full block)
BAR_HEADER = "log spectrum"
BAR_NOTE = "log spectrum: s_i / s_1 per block, from 1e-4 (▁) to 1 (█)"


def spark(normalized: list[float], width: int = 20) -> str:
    """A one-line bar of a normalized spectrum on a log scale (one block per value, resampled to ``width``)."""
    import numpy as np

    v = np.asarray(normalized, dtype=np.float64)
    if v.size == 0:
        return ""
    if v.size > width:
        v = v[np.linspace(0, v.size - 1, width).round().astype(int)]
    level = (np.log10(np.maximum(v, 10.0**-BAR_DECADES)) + BAR_DECADES) / BAR_DECADES
    return "".join(BLOCKS[int(round(x * (len(BLOCKS) - 1)))] for x in level)


def ia_text(ia: float, dim: int) -> Text:
    """IA coloured by how much of the available dimension it uses (red < 25%, yellow < 50%)."""
    share = ia / dim if dim else 0.0
    style = "red" if share < 0.25 else "yellow" if share < 0.5 else "green"
    return Text(f"{ia:.2f}", style=style)


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def report_table(title: str, columns: list[str], left: int = 1, bar: bool = False) -> Table:
    """A compact table: the first ``left`` columns left-aligned text, the rest right-aligned numbers,
    plus an inline spectrum-bar column when ``bar``."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < left else "right", no_wrap=i < left)
    if bar:
        table.add_column(BAR_HEADER, no_wrap=True, overflow="crop")
    return table


def print_header(doc: dict[str, Any]) -> None:
    """One line: checkpoint, model and dataset of a single-run report."""
    model = model_line(doc["model"]) if doc.get("model") else f"{doc['source']['layout']} tables"
    dataset = (doc.get("dataset") or {}).get("name")
    line = f"[bold]{escape(doc['checkpoint'])}[/]: {escape(model)}"
    line += f"; dataset {escape(dataset)}" if dataset else ""
    out.print(line, highlight=False, soft_wrap=True)


def print_verdict(lines: list[str]) -> None:
    """The plain-language reading that ends a report."""
    out.print("[bold]Verdict[/]", highlight=False)
    for line in lines:
        style = "yellow" if line.startswith("caution:") else ""
        out.print(Text(f"  {line}", style=style), highlight=False, soft_wrap=True)
