from .algorithms import VTHCL
from .backbones import VTHCLResNet3d
from .data_preprocessors import ClipColorDataPreprocessor
from .export import encoder_state_dict, export_encoder
from .heads import HierarchicalContrastiveHead
from .memories import HierarchicalMemoryBank

__all__ = [
    'VTHCL', 'VTHCLResNet3d', 'ClipColorDataPreprocessor',
    'HierarchicalContrastiveHead',
    'HierarchicalMemoryBank', 'encoder_state_dict', 'export_encoder'
]
