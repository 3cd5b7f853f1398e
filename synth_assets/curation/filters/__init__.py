"""The registered curation filters, in running order (phase, then registration order).

Adding a filter: write one module with a `CurationFilter` subclass (see `filters.base`), register it
below, and give its reason code a line in `curation/reasons.py` and its switch a field in `CurationSpec`.
"""

from __future__ import annotations

from synth_assets.curation.filters.base import (
    CurationFilter,
    CurationRows,
    FilterRegistry,
    Phase,
    run_filters,
)
from synth_assets.curation.filters.duplicates import (
    ExactDuplicates,
    NearDuplicates,
    ReferenceDuplicates,
    SemanticDuplicates,
)
from synth_assets.curation.filters.models import Judge, LabelCheck, LabelFidelity, Relevance, SeedLength
from synth_assets.curation.filters.perplexity import Perplexity
from synth_assets.curation.filters.text import Heuristics, PersonalData, Repairs

FILTERS = FilterRegistry()
FILTERS.register(PersonalData())
FILTERS.register(Repairs())
FILTERS.register(Heuristics())
FILTERS.register(SeedLength())
FILTERS.register(Relevance())
FILTERS.register(LabelCheck())
FILTERS.register(LabelFidelity())
FILTERS.register(Judge())
FILTERS.register(Perplexity())
FILTERS.register(ExactDuplicates())
FILTERS.register(NearDuplicates())
FILTERS.register(SemanticDuplicates())
FILTERS.register(ReferenceDuplicates())

__all__ = ["FILTERS", "CurationFilter", "CurationRows", "FilterRegistry", "Phase", "run_filters"]
