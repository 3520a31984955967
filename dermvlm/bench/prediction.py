"""What every benchmark adapter returns for one question."""
from dataclasses import dataclass


@dataclass
class Prediction:
    text: str
    confidence: float | None = None      # the adapter's probability for its answer, if any
