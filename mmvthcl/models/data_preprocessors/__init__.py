from .clip_color_data_preprocessor import ClipColorDataPreprocessor

__all__ = ['ClipColorDataPreprocessor']
