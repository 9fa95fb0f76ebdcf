# Fine-tune a VTHCL-pretrained SlowOnly-R50 (8x8) on UCF-101, split 1.
#
# The encoder comes from VTHCL pretraining (configs/vthcl_r50_k400.py),
# exported with backbone.* keys:
#   python tools/export_backbone.py work_dirs/vthcl_r50_k400/epoch_100.pth \
#       work_dirs/vthcl_r50_k400/vthcl_r50_k400_backbone.pth
# then
#   tools/dist_train.sh configs/recognition/<this file> 8
#   tools/dist_test.sh configs/recognition/<this file> \
#       work_dirs/<config name>/best_acc_top1_epoch_*.pth 8
#
# Paper (arXiv 2006.15489), K400 pretraining, fine-tuned, top-1 (%):
#   SlowOnly-R50 8 frames: UCF-101 82.1, HMDB-51 49.2
#   SlowOnly-R18 8 frames: UCF-101 80.6, HMDB-51 48.6
# The fine-tuning schedule is not in the paper: the one below is ours.
#
# Model, 8x8 pipelines (RandomResizedCrop 224 / CenterCrop 224 /
# 10 clips x ThreeCrop 256) and runtime are MMAction2's SlowOnly-R50 8x8
# Kinetics config; only the weights, the data and the schedule change.
_base_ = ('mmaction::recognition/slowonly/'
          'slowonly_r50_8xb16-8x8x1-256e_kinetics400-rgb.py')

custom_imports = dict(imports=['mmvthcl'], allow_failed_imports=False)
default_scope = 'mmaction'

# The ONE field that takes the pretrained encoder (prefixed export). The
# Runner loads it after initialisation; only cls_head.* is reported missing.
load_from = 'work_dirs/vthcl_r50_k400/vthcl_r50_k400_backbone.pth'

model = dict(
    # pretrained2d=False: a checkpoint given as backbone.pretrained (the
    # export's --format backbone) is 3D, not an ImageNet one to inflate
    backbone=dict(depth=50, pretrained=None, pretrained2d=False),
    cls_head=dict(in_channels=2048, num_classes=101))

# Stock UCF-101 layout (tools/data/ucf101 in MMAction2).
split = 1  # official train/test splits: 1, 2, 3
dataset_type = 'VideoDataset'
data_root = 'data/ucf101/videos'
ann_file_train = f'data/ucf101/ucf101_train_split_{split}_videos.txt'
ann_file_val = f'data/ucf101/ucf101_val_split_{split}_videos.txt'

train_dataloader = dict(
    batch_size=8,
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_train,
        data_prefix=dict(video=data_root)))
val_dataloader = dict(
    batch_size=8,
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_val,
        data_prefix=dict(video=data_root)))
test_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_val,
        data_prefix=dict(video=data_root)))

# schedule (ours): 8 GPUs x 8 clips, SGD, 5 warm-up epochs then cosine
max_epochs = 100
train_cfg = dict(
    type='EpochBasedTrainLoop',
    max_epochs=max_epochs,
    val_begin=1,
    val_interval=5)
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.025, momentum=0.9, weight_decay=5e-4),
    clip_grad=dict(max_norm=40, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=5),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs - 5,
        eta_min=0,
        by_epoch=True,
        begin=5,
        end=max_epochs)
]
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=3))
randomness = dict(seed=0)  # as the pretraining configs
# --auto-scale-lr rescales lr for another total batch size
auto_scale_lr = dict(enable=False, base_batch_size=64)
