"""kNN top-1 of a VTHCL slow encoder on a labelled val list.

    python tools/eval_knn.py CONFIG [CHECKPOINT] --train-ann A --val-ann B \\
        --data-root R

Without CHECKPOINT it evaluates a randomly initialised encoder of the same
config: the baseline pretraining has to beat. The last line printed is
``knn_top1: <percent>``.
"""
import argparse

import mmvthcl  # noqa: F401  (registers mmvthcl types, applies compat fixes)
import torch
from mmengine.config import DictAction

from mmvthcl.evaluation import evaluate_knn, knn_pipeline
from mmvthcl.utils import build_vthcl_model, load_tool_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='VTHCL config the model comes from')
    parser.add_argument('checkpoint', nargs='?', help='VTHCL checkpoint; '
                        'omit it to evaluate random initialisation')
    parser.add_argument('--train-ann', required=True,
                        help='labelled reference list ("path label")')
    parser.add_argument('--val-ann', required=True,
                        help='labelled list to classify')
    parser.add_argument('--data-root', default='',
                        help='directory the list paths are relative to')
    parser.add_argument('--k', type=int, default=20)
    parser.add_argument('--temperature', type=float, default=0.07)
    parser.add_argument('--depth', default='res5')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument('--no-center', action='store_true',
                        help='plain cosine of the pooled features (no '
                        'centring on the train mean)')
    parser.add_argument(
        '--seed', type=int, default=None,
        help='seed of the random initialisation (default: the config\'s '
        'randomness.seed, the model training starts from; else 0)')
    parser.add_argument('--device', default=None,
                        help='where the encoder runs, e.g. cuda, cuda:1 or '
                        'cpu (default: cuda when available)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_tool_config(args.config, args.cfg_options)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f'--device {device}: CUDA is not available here')
    try:
        model = build_vthcl_model(cfg, args.checkpoint, args.seed)
    except ValueError as e:
        raise SystemExit(str(e))
    if args.checkpoint:
        print(f'encoder: {args.checkpoint}')
    else:
        print('encoder: random initialisation (no checkpoint given)')
    model.to(device)
    top1 = evaluate_knn(
        model, args.train_ann, args.val_ann, args.data_root,
        knn_pipeline(cfg), k=args.k, temperature=args.temperature,
        depth=args.depth, batch_size=args.batch_size,
        num_workers=args.num_workers, center=not args.no_center)
    print(f'knn_top1: {top1:.2f}')


if __name__ == '__main__':
    main()
