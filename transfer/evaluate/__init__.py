"""Evaluation: protocols (subject-independent splits), metrics per decision unit, bootstrap
statistics, domain-gap diagnostics and the distances they use.

May import: :mod:`transfer.common`, :mod:`transfer.data`.
"""
