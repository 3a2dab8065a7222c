"""Training: the engine (epochs, optimisers, packs of runs), the strategies, alignment losses,
source pretraining, and model packages.

May import: :mod:`transfer.common`, :mod:`backbones`, :mod:`transfer.data`,
:mod:`transfer.evaluate`. Knows nothing of recipes as files, grids or reports.
"""
