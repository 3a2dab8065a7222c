"""Data: corpus cards, manifests, audio and segments, cached features, synthetic corpora,
decision units, and the :class:`Domain` (features, labels, speakers) that training consumes.

May import: :mod:`transfer.common`. Knows nothing of training, evaluation or grids.
"""

from transfer.data.domain import Domain, load_domain

__all__ = ["Domain", "load_domain"]
