# VTHCL pretraining of a SlowOnly-R50 (8x8) on Kinetics-400, 8 GPUs x 8 clips.
#   tools/dist_train.sh configs/vthcl_r50_k400.py 8
# Values the paper does not give are CMC/NPID practice (README, "Defaults").
_base_ = ['mmaction::_base_/default_runtime.py']

custom_imports = dict(imports=['mmvthcl'], allow_failed_imports=False)
default_scope = 'mmaction'

# ---------------------------------------------------------------- model
model = dict(
    type='VTHCL',
    backbone=dict(type='VTHCLResNet3d', depth=50, pretrained=None),
    fast_backbone=None,  # None: a copy of `backbone` with its own weights
    share_encoder=False,
    head=dict(
        type='HierarchicalContrastiveHead',
        depths=('res3', 'res4', 'res5'),
        loss_weights=(1.0, 1.0, 1.0),
        feat_dim=128,
        temperature=0.07,
        num_negatives=16384,
        per_sample_negatives=False,
        read_banks_together=None,  # None: all at once on a GPU
        memory=dict(
            type='HierarchicalMemoryBank',
            num_samples=None,  # None: the training set's length
            momentum=0.5,
            sharded=False)))

# ----------------------------------------------------------------- data
# VideoDataset that names bad files (and annotation lines) in its errors and
# seeds each sample's augmentation from (seed, epoch, index) for exact resume
dataset_type = 'RobustVideoDataset'
data_root = 'data/kinetics400/videos_train'
ann_file_train = 'data/kinetics400/kinetics400_train_list_videos.txt'
crop_size = 224

# applied to each clip independently (TempoPairDecode). The crop, resize and
# flip are lazy: Fuse crops each original frame and resizes it once (stock
# MMAction2), and the colour transforms only draw their parameters
# (defer=True) for the model's default ClipColorDataPreprocessor to apply on
# the GPU. Together they bring the loader's time for a tempo pair from 1.48x
# to 1.08x that of decoding the fast clip alone (geometric mean over 8
# videos; benchmarks/README.md, table 1).
clip_pipeline = [
    dict(type='Resize', scale=(-1, 256), lazy=True),
    dict(type='RandomResizedCrop', area_range=(0.2, 1.0), lazy=True),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False,
         lazy=True),
    dict(type='Flip', flip_ratio=0.5, lazy=True),
    dict(type='Fuse'),
    dict(type='ClipColorJitter', p=0.8, defer=True),
    dict(type='ClipGrayscale', p=0.2, defer=True),
    dict(type='FormatShape', input_format='NCTHW'),
]
train_pipeline = [
    dict(type='DecordInit'),
    dict(
        type='TempoPairSampleFrames',
        clip_len=8,
        frame_interval=8,
        alpha=2,
        same_num_frames=False),
    dict(type='TempoPairDecode', clip_pipeline=clip_pipeline,
         share_crop=False),
    dict(
        type='PackActionInputs',
        collect_keys=('imgs', 'imgs_fast'),
        algorithm_keys=('sample_idx', 'color_params', 'color_params_fast')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=8,
    persistent_workers=True,
    # φ's BatchNorm cannot train on a last batch of one clip
    drop_last=True,
    # DefaultSampler's order; skips the trained part of an epoch on resume
    sampler=dict(type='ResumableSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        ann_file=ann_file_train,
        data_prefix=dict(video=data_root),
        # True: replace a bad video by another instance (reported by
        # BadVideoHook) instead of stopping with an error naming it
        skip_bad_videos=False,
        pipeline=train_pipeline))

# -------------------------------------------------------------- schedule
max_epochs = 100
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
val_cfg = None
test_cfg = None
# lr = 0.03 x (total batch / 256); total batch = 8 GPUs x 8 = 64
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.03 * 64 / 256, momentum=0.9,
                   weight_decay=1e-4))
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min=0,
        by_epoch=True,
        begin=0,
        end=max_epochs,
        convert_to_iter_based=True)
]
# --auto-scale-lr rescales lr for another total batch size
auto_scale_lr = dict(enable=False, base_batch_size=64)

# --------------------------------------------------------------- runtime
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(
        type='CheckpointHook', interval=5, max_keep_ckpts=3, save_best=None),
    # sizes the banks from the dataset and syncs every buffer but the banks
    sync_buffers=dict(type='MemoryBankHook'),
    # --resume continues exactly: position in the epoch, seeds
    exact_resume=dict(type='ExactResumeHook'),
    # with skip_bad_videos=True: logs, counts per epoch, stops the run when
    # more than max_bad_fraction of the videos read are bad
    bad_videos=dict(type='BadVideoHook', max_bad_fraction=0.01))
randomness = dict(seed=0)
