"""Reports from harness run directories: the summary table, summary files and a self-contained HTML.

Imports pandas, pyarrow, plotly, scipy, rich, PyYAML, lazy_loader and the standard library only
(never torch, ray or the project's other packages), so a report can be rebuilt anywhere from a
run's results.

The names below load their submodule on first use (``lazy_loader.attach``): ``import
reports.format`` (the CLI's ``plural``) does not load pandas, plotly or scipy.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "html": ["ReportOptions", "WrittenReport", "write_report"],
        "load": ["Comparison", "ReportError", "RunResults", "load_run", "load_runs"],
        "summary": ["summary_table"],
        "tables": ["summary_markdown", "summary_rich"],
    },
)
