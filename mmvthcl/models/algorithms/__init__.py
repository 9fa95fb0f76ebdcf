from .vthcl import VTHCL

__all__ = ['VTHCL']
