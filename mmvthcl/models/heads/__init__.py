from .hierarchical_contrastive_head import HierarchicalContrastiveHead

__all__ = ['HierarchicalContrastiveHead']
