"""Reports of a rank sweep: per-trial and per-configuration tables, plots and a markdown summary,
read from the sweep's Optuna study (``python -m analysis``, ``make report``)."""

from analysis.load import StudyInfo, decisions_frame, study_info, trials_frame
from analysis.plots import figures, metric_vs_compute, metric_vs_params, progression, save_figure
from analysis.report import report_markdown, write_reports
from analysis.summary import pareto_mask, recommendation, summary_frame

__all__ = [
    "StudyInfo",
    "decisions_frame",
    "figures",
    "metric_vs_compute",
    "metric_vs_params",
    "pareto_mask",
    "progression",
    "recommendation",
    "report_markdown",
    "save_figure",
    "study_info",
    "summary_frame",
    "trials_frame",
    "write_reports",
]
