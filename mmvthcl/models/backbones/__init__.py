from .vthcl_resnet3d import VTHCLResNet3d

__all__ = ['VTHCLResNet3d']
