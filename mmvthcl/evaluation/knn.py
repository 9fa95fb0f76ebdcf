"""Weighted k-nearest-neighbour evaluation of frozen features (NPID style).

Labels are used here only: the pretrained slow encoder embeds a labelled train
list and a labelled val list (pooled res5 features); each val clip takes the
labels of its k most similar train clips, weighted by exp(cosine / T), and the
top-1 accuracy is reported.

Pooled post-ReLU features are all non-negative, so raw cosines are dominated
by what every clip shares. By default both sets are centred on the train
set's mean before the L2 normalisation (SimpleShot's "CL2N"; it uses no
labels), which applies to a random and a pretrained encoder alike.
"""
import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader

from mmaction.registry import DATASETS
from ..models.memories.hierarchical_memory_bank import all_gather_rows
from ..utils import (eval_mode, preserved_rng, select_depths, tempo_sampling,
                     train_crop_size, unwrap_model)


def knn_pipeline(cfg) -> List[dict]:
    """Deterministic slow-clip pipeline matching a VTHCL training config.

    Uses ``cfg.knn_pipeline`` when the config defines one; otherwise the slow
    clip's length and interval and the crop size of the training pipeline,
    with a centred window and a centre crop.
    """
    if cfg.get('knn_pipeline'):
        return copy.deepcopy(list(cfg.knn_pipeline))
    sampling = tempo_sampling(cfg)
    crop = train_crop_size(cfg)
    return [
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=sampling.get('clip_len', 8),
             frame_interval=sampling.get('frame_interval', 8), num_clips=1,
             test_mode=True),
        dict(type='DecordDecode'),
        dict(type='Resize', scale=(-1, crop * 8 // 7)),
        dict(type='CenterCrop', crop_size=crop),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs', collect_keys=('imgs', )),
    ]


def build_loader(ann_file: str, data_root: str, pipeline: List[dict],
                 batch_size: int = 16, num_workers: int = 0) -> DataLoader:
    """An unshuffled loader over this rank's share of a labelled list."""
    from mmengine.dist import get_dist_info
    dataset = DATASETS.build(
        dict(type='VideoDataset', ann_file=ann_file,
             data_prefix=dict(video=data_root), pipeline=pipeline,
             test_mode=True))
    rank, world = get_dist_info()
    indices = list(range(rank, len(dataset), world))
    return DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
        collate_fn=pseudo_collate)


@torch.no_grad()
def extract_features(model, loader, depth: str = 'res5',
                     tempo: str = 'slow') -> Tuple[torch.Tensor, torch.Tensor]:
    """Pooled encoder features and labels of a loader.

    Views of a clip are averaged. The model is put in eval mode (BN
    statistics and memory banks are left untouched) and every module's mode
    is restored afterwards. In a
    distributed run every rank embeds its share and all ranks receive all
    features.

    Returns:
        tuple: features (N, C), not normalised, and labels (N, ).
    """
    model = unwrap_model(model)
    select_depths(depth, model.depths)
    pos = model.depths.index(depth)
    feats, labels = [], []
    device = next(model.parameters()).device
    with eval_mode(model):
        for data in loader:
            data = model.data_preprocessor(data, False)
            imgs = data['inputs']['imgs']  # (B, V, C, T, H, W)
            b, v = imgs.shape[:2]
            x = model.extract_feat(imgs, tempo)[pos].mean(dim=(2, 3, 4))
            feats.append(x.view(b, v, -1).mean(1))
            labels.append(
                torch.stack([ds.gt_label.flatten()[0]
                             for ds in data['data_samples']]).to(device))
    if feats:
        feats, labels = torch.cat(feats), torch.cat(labels)
    else:
        # a list with fewer clips than processes leaves this rank none; it
        # must still join the gathers, or the other ranks wait in them
        feats = torch.zeros(0, model.backbone.out_channels[pos],
                            device=device)
        labels = torch.zeros(0, dtype=torch.long, device=device)
    return all_gather_rows(feats).float(), all_gather_rows(labels).long()


def knn_top1(train_feats: torch.Tensor,
             train_labels: torch.Tensor,
             val_feats: torch.Tensor,
             val_labels: torch.Tensor,
             k: int = 20,
             temperature: float = 0.07,
             chunk: int = 1024) -> float:
    """Weighted kNN top-1 accuracy in percent.

    Args:
        train_feats (Tensor): (N, C) unit features of the labelled train set.
        train_labels (Tensor): (N, ) class indices.
        val_feats (Tensor): (M, C) unit features to classify.
        val_labels (Tensor): (M, ) ground truth.
        k (int): Neighbours. Defaults to 20.
        temperature (float): Vote weight exp(sim / T). Defaults to 0.07.
        chunk (int): Val rows per similarity block (bounds memory).
    """
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    k = min(k, train_feats.shape[0])
    correct = 0
    for s in range(0, val_feats.shape[0], chunk):
        sims = val_feats[s:s + chunk] @ train_feats.t()
        top_sim, top_idx = sims.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = weights.new_zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        correct += int((votes.argmax(1) == val_labels[s:s + chunk]).sum())
    return 100.0 * correct / val_feats.shape[0]


def evaluate_knn(model,
                 train_ann: str,
                 val_ann: str,
                 data_root: str,
                 pipeline: List[dict],
                 k: int = 20,
                 temperature: float = 0.07,
                 depth: str = 'res5',
                 batch_size: int = 16,
                 num_workers: int = 0,
                 loaders: Optional[Dict[str, DataLoader]] = None,
                 center: bool = True) -> float:
    """kNN top-1 (%) of ``model``'s slow encoder on a val list vs a train
    list; ``loaders`` may cache the two loaders between calls; ``center``
    subtracts the train features' mean before normalising."""
    if loaders is None:
        loaders = {}
    for split, ann in (('train', train_ann), ('val', val_ann)):
        if split not in loaders:
            loaders[split] = build_loader(ann, data_root, pipeline,
                                          batch_size, num_workers)
    with preserved_rng():
        train_f, train_y = extract_features(model, loaders['train'], depth)
        val_f, val_y = extract_features(model, loaders['val'], depth)
    if center:
        mean = train_f.mean(dim=0, keepdim=True)
        train_f, val_f = train_f - mean, val_f - mean
    return knn_top1(F.normalize(train_f, dim=1), train_y,
                    F.normalize(val_f, dim=1), val_y, k=k,
                    temperature=temperature)
