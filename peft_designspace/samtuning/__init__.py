"""SAM sparse tuning (Fu et al., AAAI 2023): train the few entries a second-order approximation selects."""

from .calibration import calibrate_sam
from .config import SAMTuningConfig
from .layer import SAMTuningLayer
from .model import SAMTuningModel, has_selection

__all__ = ["SAMTuningConfig", "SAMTuningLayer", "SAMTuningModel", "calibrate_sam", "has_selection"]
