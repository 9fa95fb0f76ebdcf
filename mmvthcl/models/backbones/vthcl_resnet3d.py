"""The VTHCL encoder: a stock SlowOnly 3D ResNet exposing res3/res4/res5."""
from typing import Dict, Optional, Sequence, Tuple

import torch

from mmaction.models import ResNet3dSlowOnly
from mmaction.registry import MODELS

#: Stage names of a ResNet, as VTHCL configs spell them, and the
#: ``out_indices`` position of each (``layer1`` = res2 ... ``layer4`` = res5).
DEPTH_INDEX: Dict[str, int] = {'res2': 0, 'res3': 1, 'res4': 2, 'res5': 3}


def depth_indices(depths: Sequence[str]) -> Tuple[int, ...]:
    """Map depth names such as ``('res3', 'res5')`` to ``out_indices``."""
    unknown = [d for d in depths if d not in DEPTH_INDEX]
    if unknown or not depths:
        raise ValueError(f'unknown depth name(s) {unknown or list(depths)}; '
                         f'choose from {sorted(DEPTH_INDEX)}')
    indices = tuple(DEPTH_INDEX[d] for d in depths)
    if list(indices) != sorted(set(indices)):
        raise ValueError(f'depths {tuple(depths)} must be distinct and in '
                         'network order (res2 .. res5)')
    return indices


@MODELS.register_module()
class VTHCLResNet3d(ResNet3dSlowOnly):
    """SlowOnly 3D ResNet (depth 18 or 50) returning res3, res4 and res5.

    It adds no parameter and renames none, so its state dict is key for key
    the one of :class:`ResNet3dSlowOnly`: an exported encoder loads into stock
    recognizers and the AVA detector with ``strict=True``. Differences from
    the stock class: by default it returns the features of several stages
    (always as a tuple), it never fetches weights from the network
    (``pretrained=None``) and a checkpoint given as ``pretrained`` is a 3D one
    (``pretrained2d=False``); and stages after the deepest one in
    ``out_indices`` are frozen (``requires_grad=False``) and not run, their
    keys kept with their initial weights.

    Args:
        depth (int): ResNet depth, 18 or 50 (any depth of
            :class:`ResNet3d` works). Defaults to 50.
        out_indices (Sequence[int]): Stages to return; ``(1, 2, 3)`` is
            res3, res4, res5. Stages after the last one keep their
            (initial) weights and are not run. Defaults to ``(1, 2, 3)``.
        pretrained (str, optional): Path of a 3D checkpoint with bare
            backbone keys. Defaults to None.
        pretrained2d (bool): Whether ``pretrained`` is a 2D ImageNet
            checkpoint to inflate. Defaults to False.
        **kwargs: Any other :class:`ResNet3dSlowOnly` argument
            (``base_channels``, ``spatial_strides``, ``norm_eval``, ...).
    """

    def __init__(self,
                 depth: int = 50,
                 out_indices: Sequence[int] = (1, 2, 3),
                 pretrained: Optional[str] = None,
                 pretrained2d: bool = False,
                 **kwargs) -> None:
        super().__init__(
            depth=depth,
            out_indices=tuple(out_indices),
            pretrained=pretrained,
            pretrained2d=pretrained2d,
            **kwargs)
        # Stages after the deepest returned one (res5 when the depths stop at
        # res4) stay in the state dict, so the keys remain ResNet3dSlowOnly's,
        # but they are not run (the stock forward walks ``res_layers``) and
        # not trained: no gradient would reach them, and DDP, which expects
        # one for every parameter that requires it, would stop at the second
        # iteration.
        last = max(self.out_indices)
        for name in self.res_layers[last + 1:]:
            getattr(self, name).requires_grad_(False)
        self.res_layers = self.res_layers[:last + 1]

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of each returned stage, in ``out_indices`` order."""
        return tuple(self.base_channels * 2**i * self.block.expansion
                     for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Return the features of the ``out_indices`` stages as a tuple."""
        outs = super().forward(x)
        return outs if isinstance(outs, tuple) else (outs, )
