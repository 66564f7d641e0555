"""Plain `torch.nn` building blocks of the pack's strategies, with flat arguments and no PEFT import."""

from .adapter import Bottleneck
from .lora import LowRank
from .lra import LowRankAdapter, lra_parameters
from .prefix import PrefixKV

__all__ = ["Bottleneck", "LowRank", "LowRankAdapter", "PrefixKV", "lra_parameters"]
