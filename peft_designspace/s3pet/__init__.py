"""S3PET (Hu et al., NeurIPS 2022): search where to put which delta module under a budget, then retrain it."""

from .config import S3PETConfig
from .layer import S3PETLayer
from .model import S3PETModel
from .space import Candidate, enumerate_candidates
from .structure import build_structure, load_structure, save_structure

__all__ = [
    "Candidate",
    "S3PETConfig",
    "S3PETLayer",
    "S3PETModel",
    "build_structure",
    "enumerate_candidates",
    "load_structure",
    "save_structure",
]
