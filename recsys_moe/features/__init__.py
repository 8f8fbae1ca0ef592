"""Feature pipeline on Polars (imports without torch): fit a FeatureSpec, transform raw logs."""

from recsys_moe.features.fit import FeatureError, fit
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.features.spec import FeatureSpec, SpecError
from recsys_moe.features.transform import apply_spec, transform

__all__ = ["FeatureError", "FeatureSpec", "HistoryState", "SpecError", "apply_spec", "fit", "transform"]
