"""peft-designspace: research PEFT methods as registered Hugging Face PEFT methods.

Importing the package registers every method of the pack with PEFT, so that `peft.get_peft_model`,
`PeftModel.from_pretrained`, `AutoPeftModel...` and transformers' `load_adapter` work with them.

Example:

```py
>>> import peft_designspace
>>> from peft_designspace import DesignSpaceConfig
>>> DesignSpaceConfig(preset="s4", budget=0.005, task_type="SEQ_CLS").peft_type
<PeftType.DESIGNSPACE: 'DESIGNSPACE'>
```
"""

from ._registry import check_peft_version, keep_pack_card, register_method

check_peft_version()

from ._version import __version__  # noqa: E402
from ._warnings import DesignSpaceWarning  # noqa: E402
from .designspace import BudgetReport, DesignSpaceConfig, DesignSpaceModel  # noqa: E402
from .s3pet import S3PETConfig, S3PETModel  # noqa: E402
from .samtuning import SAMTuningConfig, SAMTuningModel, calibrate_sam  # noqa: E402

register_method("designspace", DesignSpaceConfig, DesignSpaceModel)
register_method("samtuning", SAMTuningConfig, SAMTuningModel)
register_method("s3pet", S3PETConfig, S3PETModel)
keep_pack_card()

__all__ = [
    "BudgetReport",
    "DesignSpaceConfig",
    "DesignSpaceModel",
    "DesignSpaceWarning",
    "S3PETConfig",
    "S3PETModel",
    "SAMTuningConfig",
    "SAMTuningModel",
    "__version__",
    "calibrate_sam",
]
