"""A tiny table model rendered to both HTML and GitHub Markdown, so both reports hold the same cells."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field


@dataclass
class Cell:
    text: str
    cls: str = ""  # CSS class(es) in HTML
    md: str | None = None  # Markdown text, when it differs (e.g. bold verdicts)
    title: str = ""  # HTML tooltip

    def as_md(self) -> str:
        return self.text if self.md is None else self.md


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell | str]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    groups: list[tuple[str, int]] | None = None  # HTML-only top header row: (label, colspan)
    numeric_from: int = 10**9  # columns at or after this index are right-aligned numbers
    css: str = ""

    def add(self, cells: list[Cell | str], cls: str = "") -> None:
        self.rows.append(cells)
        self.row_classes.append(cls)

    @staticmethod
    def _cell(c: Cell | str) -> Cell:
        return c if isinstance(c, Cell) else Cell(str(c))

    def html(self) -> str:
        out = [f'<div class="tablewrap"><table class="{html.escape(self.css)}">', "<thead>"]
        if self.groups:
            out.append(
                "<tr>"
                + "".join(
                    f'<th colspan="{n}" class="{"grp" if label else ""}">{html.escape(label)}</th>'
                    for label, n in self.groups
                )
                + "</tr>"
            )
        out.append(
            "<tr>"
            + "".join(
                f'<th class="{"num" if i >= self.numeric_from else ""}">{html.escape(c)}</th>'
                for i, c in enumerate(self.columns)
            )
            + "</tr>"
        )
        out.append("</thead><tbody>")
        for row, rcls in zip(self.rows, self.row_classes):
            tds = []
            for i, c in enumerate(row):
                c = self._cell(c)
                cls = " ".join(x for x in (c.cls, "num" if i >= self.numeric_from else "") if x)
                title = f' title="{html.escape(c.title)}"' if c.title else ""
                tds.append(f'<td class="{cls}"{title}>{html.escape(c.text)}</td>')
            out.append(f'<tr class="{html.escape(rcls)}">' + "".join(tds) + "</tr>")
        out.append("</tbody></table></div>")
        return "\n".join(out)

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

        lines = [
            "| " + " | ".join(esc(c) for c in self.columns) + " |",
            "|" + "|".join("---:" if i >= self.numeric_from else "---" for i in range(len(self.columns))) + "|",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(esc(self._cell(c).as_md()) for c in row) + " |")
        return "\n".join(lines)


# --------------------------------------------------------------------------- number formats


def isnum(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}" if isnum(x) else "—"


def fmt_signed(x, digits: int = 3) -> str:
    if not isnum(x):
        return "—"
    x = float(x)
    if abs(x) < 1e-12:  # float noise of a zero mean
        return f"{0:.{digits}f}"
    while round(x, digits) == 0 and digits < 6:  # a non-zero CI bound never prints as 0
        digits += 1
    return f"{x:+.{digits}f}"


def fmt_mean_std(mean, std, n: int | None = None, row_n: int | None = None, digits: int = 3) -> str:
    if not isnum(mean):
        return "—"
    text = fmt(mean, digits)
    if isnum(std):
        text += f" ± {fmt(std, digits)}"
    if n is not None and n != row_n:
        text += f" (n={int(n)})"
    return text


def fmt_ci(lo, hi, digits: int = 3) -> str:
    if not (isnum(lo) and isnum(hi)):
        return "—"
    return f"[{fmt_signed(lo, digits)}, {fmt_signed(hi, digits)}]"


__all__ = ["Cell", "Table", "fmt", "fmt_signed", "fmt_mean_std", "fmt_ci", "isnum"]
