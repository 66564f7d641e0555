"""Plain `torch.nn` building blocks of the pack's strategies, with flat arguments and no PEFT import."""

from .adapter import Bottleneck
from .lora import LowRank
from .prefix import PrefixKV

__all__ = ["Bottleneck", "LowRank", "PrefixKV"]
