from .hierarchical_memory_bank import HierarchicalMemoryBank

__all__ = ['HierarchicalMemoryBank']
