from .clip_augment import ClipColorJitter, ClipGrayscale
from .tempo_pair import TempoPairDecode, TempoPairSampleFrames

__all__ = [
    'TempoPairSampleFrames', 'TempoPairDecode', 'ClipColorJitter',
    'ClipGrayscale'
]
