from .bad_video_hook import BadVideoHook
from .exact_resume_hook import ExactResumeHook
from .icm_hook import ICMHook
from .knn_monitor_hook import KNNMonitorHook
from .memory_bank_hook import MemoryBankHook

__all__ = [
    'BadVideoHook', 'ExactResumeHook', 'ICMHook', 'KNNMonitorHook',
    'MemoryBankHook'
]
