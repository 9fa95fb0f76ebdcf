# A small VTHCL (narrow R18, 48x48 clips) that pretrains on the generated
# tempo dataset (tools/data/make_synthetic.py) on 2 CPU cores in minutes.
# `make demo` runs it end to end; by hand:
#   python tools/data/make_synthetic.py --out data/synthetic
#   python tools/train.py configs/demo/vthcl_tiny_synthetic.py
_base_ = ['../vthcl_r18_k400.py']

data_root = 'data/synthetic/videos'
ann_file_train = 'data/synthetic/train.txt'
ann_file_val = 'data/synthetic/val.txt'
crop_size = 48

model = dict(
    backbone=dict(depth=18, base_channels=16, with_pool1=False),
    head=dict(
        num_negatives=256,
        # centred embeddings: on a few hundred videos the banks fill within
        # an epoch and the projection of the design collapses (see
        # HierarchicalContrastiveHead); ours
        out_norm_cfg=dict(type='BN1d', affine=False)))

# Only flips (ours, demo only). At 48² the object is a few pixels wide, and
# the design's RandomResizedCrop and colour jitter decide most of what an
# untrained encoder's pooled feature is: the res5 embeddings of two clips of
# one video have cosine 0.03 at init with them, 0.27 without, and runs with
# them learn nothing (README, "What the demo shows"). The generated videos' own
# drift (background, colour, size, path and speed redrawn every 16 frames)
# gives the nuisance invariance that augmentation gives on real videos: the
# positive, a bank entry from another moment of the video, shares only the
# class with the query.
clip_pipeline = [
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCTHW'),
]
clip_len, frame_interval = 8, 4
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='TempoPairSampleFrames', clip_len=clip_len,
         frame_interval=frame_interval, alpha=2),
    dict(type='TempoPairDecode', clip_pipeline=clip_pipeline),
    dict(type='PackActionInputs', collect_keys=('imgs', 'imgs_fast'),
         algorithm_keys=('sample_idx', )),
]
# a deterministic slow clip for the kNN evaluation
knn_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=clip_len,
         frame_interval=frame_interval, num_clips=1, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs', collect_keys=('imgs', )),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=2,
    persistent_workers=True,
    dataset=dict(
        ann_file=ann_file_train,
        data_prefix=dict(video=data_root),
        pipeline=train_pipeline))

max_epochs = 30
train_cfg = dict(max_epochs=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=0.03 * 16 / 256 * 4))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0,
         by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
custom_hooks = [
    dict(type='KNNMonitorHook', train_ann=ann_file_train,
         val_ann=ann_file_val, data_root=data_root,
         pipeline=knn_pipeline, interval=10, k=20),
]
