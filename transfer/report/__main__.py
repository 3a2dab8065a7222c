"""``python -m transfer.report RESULTS_DIR``: rebuild a results folder's tables, figures and
report.html from its run records."""

from transfer.report.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
