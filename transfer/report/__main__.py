"""``python -m transfer.report RESULTS_DIR``: rebuild a results folder's tables."""

from transfer.report.tables import main

if __name__ == "__main__":
    raise SystemExit(main())
