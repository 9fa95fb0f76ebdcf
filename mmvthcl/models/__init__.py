from .algorithms import VTHCL
from .backbones import VTHCLResNet3d
from .heads import HierarchicalContrastiveHead
from .memories import HierarchicalMemoryBank

__all__ = [
    'VTHCL', 'VTHCLResNet3d', 'HierarchicalContrastiveHead',
    'HierarchicalMemoryBank'
]
