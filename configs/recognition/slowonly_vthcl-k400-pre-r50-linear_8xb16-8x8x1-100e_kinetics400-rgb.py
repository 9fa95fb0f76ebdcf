# Linear probe on Kinetics-400: a VTHCL-pretrained SlowOnly-R50 (8x8),
# frozen, under a trained linear classifier. The schedule is ours (the paper
# reports fine-tuning only).
#   python tools/export_backbone.py work_dirs/vthcl_r50_k400/epoch_100.pth \
#       work_dirs/vthcl_r50_k400/vthcl_r50_k400_backbone.pth
#   tools/dist_train.sh configs/recognition/<this file> 8
#
# Data, 8x8 pipelines and runtime are MMAction2's SlowOnly-R50 8x8
# Kinetics-400 config (data/kinetics400/...).
_base_ = ('mmaction::recognition/slowonly/'
          'slowonly_r50_8xb16-8x8x1-256e_kinetics400-rgb.py')

custom_imports = dict(imports=['mmvthcl'], allow_failed_imports=False)
default_scope = 'mmaction'

# The ONE field that takes the pretrained encoder (prefixed export).
load_from = 'work_dirs/vthcl_r50_k400/vthcl_r50_k400_backbone.pth'

model = dict(
    backbone=dict(
        depth=50,
        pretrained=None,
        pretrained2d=False,
        # conv1 and res2..res5 get no gradient and stay in eval mode, so
        # neither the weights nor the BN statistics move: only cls_head trains
        frozen_stages=4,
        norm_eval=True),
    # a linear classifier on the pooled features
    cls_head=dict(in_channels=2048, num_classes=400, dropout_ratio=0.0))

# MMAction2's 3D ResNets freeze their stages in train(), after the Runner has
# wrapped the model in DDP: without this, DDP waits for the frozen
# parameters' gradients and stops at the second iteration. (DDP then
# all-reduces their zero gradients: the traffic of a fine-tuning step.)
find_unused_parameters = True

max_epochs = 100
train_cfg = dict(
    type='EpochBasedTrainLoop',
    max_epochs=max_epochs,
    val_begin=1,
    val_interval=5)
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0),
    clip_grad=None,
    # belt and braces: even a backbone parameter left trainable gets no
    # update
    paramwise_cfg=dict(
        custom_keys=dict(backbone=dict(lr_mult=0.0, decay_mult=0.0))))
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min=0,
        by_epoch=True,
        begin=0,
        end=max_epochs)
]
default_hooks = dict(checkpoint=dict(interval=5, max_keep_ckpts=3))
randomness = dict(seed=0)  # as the pretraining configs
auto_scale_lr = dict(enable=False, base_batch_size=128)
