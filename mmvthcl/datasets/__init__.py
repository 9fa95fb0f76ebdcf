from .robust_video_dataset import RobustVideoDataset
from .samplers import ResumableSampler, SeededIndex
from .transforms import *  # noqa: F401,F403
from .transforms import __all__ as _transforms_all
from .video_checks import BadVideoError, probe_video_file

__all__ = [
    'RobustVideoDataset', 'ResumableSampler', 'SeededIndex',
    'BadVideoError', 'probe_video_file'
]
__all__ += _transforms_all  # the package exported them before
