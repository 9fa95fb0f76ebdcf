from .icm_hook import ICMHook
from .knn_monitor_hook import KNNMonitorHook
from .memory_bank_hook import MemoryBankHook

__all__ = ['ICMHook', 'KNNMonitorHook', 'MemoryBankHook']
