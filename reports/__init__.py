"""Reports from harness run directories: the summary table, summary files and a self-contained HTML.

Imports pandas, pyarrow, plotly, scipy, rich, PyYAML and the standard library only (never
torch, ray or the project's other packages), so a report can be rebuilt anywhere from a run's
results.
"""

from reports.html import ReportOptions, WrittenReport, write_report
from reports.load import Comparison, ReportError, RunResults, load_run, load_runs
from reports.summary import summary_table
from reports.tables import summary_markdown, summary_rich

__all__ = [
    "Comparison",
    "ReportError",
    "ReportOptions",
    "RunResults",
    "WrittenReport",
    "load_run",
    "load_runs",
    "summary_markdown",
    "summary_rich",
    "summary_table",
    "write_report",
]
