"""Offline evaluation metrics per task (`classification`, `segmentation`, `detection`); the classification metrics
are also importable from here (`from pacavit.metrics import TopKAccuracy`)."""

from . import classification
from .classification import *  # noqa: F403  (exactly classification.__all__)

__all__ = list(classification.__all__)
