"""VTHCLResNet3d: shapes, and state dicts identical to ResNet3dSlowOnly."""
import pytest
import torch

from mmaction.models import ResNet3dSlowOnly
from mmvthcl.models import VTHCLResNet3d
from mmvthcl.models.backbones.vthcl_resnet3d import depth_indices


@pytest.mark.parametrize('depth, channels', [(18, (128, 256, 512)),
                                             (50, (512, 1024, 2048))])
@pytest.mark.parametrize('frames', [8, 16])
def test_res3_res4_res5_shapes(depth, channels, frames):
    net = VTHCLResNet3d(depth=depth)
    net.init_weights()
    x = torch.rand(1, 3, frames, 64, 64)
    with torch.no_grad():
        outs = net(x)
    # SlowOnly keeps T; strides 8, 16, 32
    assert [tuple(o.shape) for o in outs] == [
        (1, channels[0], frames, 8, 8),
        (1, channels[1], frames, 4, 4),
        (1, channels[2], frames, 2, 2),
    ]
    assert net.out_channels == channels


def test_single_depth_is_still_a_tuple():
    net = VTHCLResNet3d(depth=18, base_channels=8, out_indices=(3, ))
    outs = net(torch.rand(1, 3, 4, 32, 32))
    assert isinstance(outs, tuple) and len(outs) == 1
    assert net.out_channels == (64, )


@pytest.mark.parametrize('depth', [18, 50])
def test_state_dict_keys_identical_to_stock_slowonly(depth):
    ours = VTHCLResNet3d(depth=depth)
    ours.init_weights()
    stock = ResNet3dSlowOnly(depth=depth, pretrained=None,
                             pretrained2d=False, out_indices=(3, ))
    assert list(ours.state_dict()) == list(stock.state_dict())
    for k, v in stock.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k
    # strict loads both ways, and the stock model then computes res5 alike
    stock.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(stock.state_dict(), strict=True)
    ours.eval(), stock.eval()
    x = torch.rand(1, 3, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x)[-1], stock(x))


def test_stages_after_the_deepest_output_are_frozen_and_not_run():
    """Depths that stop at res4 leave layer4 untouched: no gradient, never
    run (its BN statistics stay as initialised in train mode)."""
    net = VTHCLResNet3d(depth=18, base_channels=8, out_indices=(1, 2))
    net.init_weights()
    net.train()
    calls = []
    net.layer4.register_forward_hook(lambda *args: calls.append(1))
    stats = {k: v.clone() for k, v in net.layer4.state_dict().items()}
    outs = net(torch.rand(2, 3, 4, 32, 32))
    assert len(outs) == 2 and outs[-1].shape[1] == 32
    assert not calls
    assert all(torch.equal(v, stats[k])
               for k, v in net.layer4.state_dict().items())
    assert not any(p.requires_grad for p in net.layer4.parameters())
    assert all(p.requires_grad for p in net.layer3.parameters())


def test_no_network_default():
    net = VTHCLResNet3d(depth=18)
    assert net.pretrained is None and net.pretrained2d is False


def test_depth_names():
    assert depth_indices(('res3', 'res4', 'res5')) == (1, 2, 3)
    assert depth_indices(('res5', )) == (3, )
    with pytest.raises(ValueError, match="unknown depth name.*res6"):
        depth_indices(('res3', 'res6'))
    with pytest.raises(ValueError, match='network order'):
        depth_indices(('res5', 'res3'))
