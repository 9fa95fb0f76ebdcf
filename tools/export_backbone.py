"""Export the encoder of a VTHCL checkpoint for fine-tuning and detection.

    python tools/export_backbone.py work_dirs/vthcl_r50_k400/epoch_100.pth \\
        work_dirs/vthcl_r50_k400/vthcl_r50_k400_backbone.pth

writes ``{'state_dict': {'backbone.<key>': tensor}}``, which the configs under
``configs/recognition`` take as ``load_from`` and those under
``configs/detection`` as ``model.init_cfg.checkpoint``. ``--format backbone``
writes bare keys instead, for ``model.backbone.pretrained`` (with
``pretrained2d=False``). The file holds tensors only, so it loads with
``torch.load(weights_only=True)``.
"""
import argparse
import sys

import mmvthcl  # noqa: F401  (compat fixes before anything else)
from mmvthcl.models.export import FORMATS, export_encoder


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export the slow (or fast) encoder of a VTHCL training '
        'checkpoint as a tensors-only backbone checkpoint')
    parser.add_argument('checkpoint', help='VTHCL training checkpoint')
    parser.add_argument('out', help='output file (its directory is created)')
    parser.add_argument(
        '--encoder',
        choices=['slow', 'fast'],
        default='slow',
        help='which encoder to export; the slow (8x8) one is the one VTHCL '
        'transfers (default: slow)')
    parser.add_argument(
        '--format',
        choices=FORMATS,
        default='prefixed',
        help='prefixed: backbone.<key>, for load_from and the AVA detector '
        'init_cfg; backbone: bare keys, for backbone.pretrained '
        '(default: prefixed)')
    parser.add_argument(
        '--overwrite', action='store_true', help='replace OUT if it exists')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        info = export_encoder(
            args.checkpoint,
            args.out,
            encoder=args.encoder,
            fmt=args.format,
            overwrite=args.overwrite)
    except (OSError, RuntimeError, ValueError) as e:
        sys.exit(f'export_backbone: error: {e}')
    note = ''
    if args.encoder == 'fast' and info['shared']:
        note = ' (the model shared one encoder between both tempos)'
    keys = 'backbone.<key>' if args.format == 'prefixed' else 'bare'
    print(f"wrote {info['num_tensors']} tensors of the {args.encoder} "
          f'encoder{note}, {keys} keys, to {args.out}')
    print(f'load it with {usage(args.format, args.out)}')


def usage(fmt, path):
    """The ``--cfg-options`` that load an export of format ``fmt``."""
    if fmt == 'prefixed':
        return (f'--cfg-options load_from={path} (recognition) or '
                f'model.init_cfg.checkpoint={path} (detection)')
    # Stock SlowOnly configs keep pretrained2d=True, which inflates a 2D
    # ResNet: MMAction2 then finds none of these 3D keys, keeps the random
    # weights and only logs 'Module not exist in the state_dict_r2d'.
    return (f'--cfg-options model.backbone.pretrained={path} '
            'model.backbone.pretrained2d=False (with pretrained2d=True '
            'MMAction2 looks for 2D ResNet keys and loads none of these)')


if __name__ == '__main__':
    main()
