"""Shared plumbing, the bottom stage: the recipe's config dataclasses, content-addressed
caches, the console and CLI guard, progress bars.

May import: nothing from ``transfer`` but :mod:`transfer` itself (``UserError``, version) and
other ``transfer.common`` modules.
"""
