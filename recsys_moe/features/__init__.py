"""Feature pipeline on Polars (imports without torch): fit a FeatureSpec, transform raw logs."""

from recsys_moe.features.fit import FeatureError, fit
from recsys_moe.features.mapper import FeatureMapper, apply_spec
from recsys_moe.features.pointintime import HistoryState
from recsys_moe.features.spec import FeatureSpec, SpecError
from recsys_moe.features.transform import transform

__all__ = ["FeatureError", "FeatureMapper", "FeatureSpec", "HistoryState", "SpecError", "apply_spec", "fit", "transform"]
