"""Reports: comparison tables, leak reports and figures, built from run records alone.

``python -m transfer.report RESULTS_DIR`` rebuilds a results folder's tables.
May import: every stage below (common, data, evaluate, train, grid); never a CLI.
"""
