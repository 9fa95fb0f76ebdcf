"""Colour augmentation on the model's device, for the records the loader drew.

``ClipColorJitter`` and ``ClipGrayscale`` with ``defer=True`` leave each clip's
colour untouched and record their random draws; this preprocessor applies the
records to the whole batch where the model runs (one pass over the batch on a
GPU instead of the loader's per-clip float work on the CPU), then normalises as
``ActionDataPreprocessor`` does. Clips without records pass through unchanged.
"""
from typing import List, Optional, Tuple

import torch
from mmengine.model import stack_batch

from mmaction.models import ActionDataPreprocessor
from mmaction.registry import MODELS
from mmaction.utils import SampleList
from ...datasets.transforms.clip_augment import (COLOR_PARAMS_KEY,
                                                 apply_color_params)


@MODELS.register_module()
class ClipColorDataPreprocessor(ActionDataPreprocessor):
    """``ActionDataPreprocessor`` that first applies deferred colour jitter.

    The record of each sample is read from (and removed from) its data sample,
    where ``PackActionInputs(algorithm_keys=(..., 'color_params'))`` put it.
    The clips must still be RGB 0-255, i.e. the record is applied before the
    normalisation.

    Args:
        params_key (str): Data-sample field holding the records; the fast clip
            of a tempo pair uses ``'color_params_fast'``.
            Defaults to ``'color_params'``.
        **kwargs: Arguments of :class:`ActionDataPreprocessor` (``mean``,
            ``std``, ``format_shape``, ...).
    """

    def __init__(self, params_key: str = COLOR_PARAMS_KEY, **kwargs) -> None:
        super().__init__(**kwargs)
        self.params_key = params_key

    def preprocess(self,
                   inputs: List[torch.Tensor],
                   data_samples: Optional[SampleList],
                   training: bool = False) -> Tuple:
        records = [ds.get(self.params_key) for ds in data_samples or ()]
        if not any(r is not None for r in records):
            return super().preprocess(inputs, data_samples, training)
        missing = sum(r is None for r in records)
        if missing:
            raise ValueError(
                f'{type(self).__name__}: {missing} of {len(records)} samples '
                f'lack "{self.params_key}"; either every clip of a batch '
                'defers its colour augmentation or none')
        # the pipeline decided the augmentation, so it is applied in any
        # mode; the records are consumed (VTHCL checks none is left over)
        batch = apply_color_params(stack_batch(inputs).float(), records)
        for ds in data_samples:
            ds.pop(self.params_key)
        return super().preprocess(list(batch), data_samples, training)
