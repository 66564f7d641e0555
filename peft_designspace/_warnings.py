"""Warning classes of the pack, so that users can filter them precisely."""

from peft import PeftWarning


class DesignSpaceWarning(PeftWarning):
    """Warnings raised by the design-space (S4) method, e.g. a budget that cannot be met within tolerance."""
