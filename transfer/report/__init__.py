"""Reports: comparison tables, leak reports, figures, operating points, calibration, subgroups,
EmoBox-compatible predictions and one self-contained ``report.html``, built from run records
alone.

``python -m transfer.report RESULTS_DIR`` rebuilds a results folder's report.
May import: every stage below (common, data, evaluate, train, grid); never a CLI.
"""
