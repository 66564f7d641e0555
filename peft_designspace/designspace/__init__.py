"""Design-space mixed-strategy tuning (S4): Chen et al., ICLR 2023, https://arxiv.org/abs/2301.01821."""

from .config import DesignSpaceConfig
from .layer import DesignSpaceLayer, Linear, Norm, PrefixHolder
from .model import DesignSpaceModel
from .presets import PRESETS, STRATEGIES
from .report import BudgetReport

__all__ = [
    "PRESETS",
    "STRATEGIES",
    "BudgetReport",
    "DesignSpaceConfig",
    "DesignSpaceLayer",
    "DesignSpaceModel",
    "Linear",
    "Norm",
    "PrefixHolder",
]
