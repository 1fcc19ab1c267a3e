"""The multi-source face stream (see `dataset` for the batch format and resume semantics)."""
from .dataset import FaceStream, Position, StreamConfig
from .decode import Augment
from .sources import Source, build_sources, parse_weights, resolve

__all__ = ["Augment", "FaceStream", "Position", "Source", "StreamConfig", "build_sources", "parse_weights", "resolve"]
