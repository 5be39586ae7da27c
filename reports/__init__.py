"""Reports from a harness run directory: leaderboard, summary files and a self-contained HTML.

Imports pandas, pyarrow, plotly, rich, PyYAML and the standard library only (never torch, ray
or the project's other packages), so a report can be rebuilt anywhere from a run's results.
"""

from reports.html import write_report
from reports.load import ReportError, RunResults, load_run
from reports.summary import leaderboard, leaderboard_table

__all__ = [
    "ReportError",
    "RunResults",
    "leaderboard",
    "leaderboard_table",
    "load_run",
    "write_report",
]
