"""One trial of image-classification training: data, model and recipe, run by Ray Tune."""

from trainables.config import TrialConfig
from trainables.errors import UserError

__all__ = ["TrialConfig", "UserError"]
