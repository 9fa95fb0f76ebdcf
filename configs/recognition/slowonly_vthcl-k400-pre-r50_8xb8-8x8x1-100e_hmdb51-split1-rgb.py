# Fine-tune a VTHCL-pretrained SlowOnly-R50 (8x8) on HMDB-51, split 1.
# Paper (arXiv 2006.15489), fine-tuned top-1: R50 49.2, R18 48.6.
# Same weights (load_from), model, pipelines and schedule as the UCF-101
# config; only the classes and the data change.
_base_ = ['./slowonly_vthcl-k400-pre-r50_8xb8-8x8x1-100e_ucf101-split1-rgb.py']

model = dict(cls_head=dict(num_classes=51))

# Stock HMDB-51 layout (tools/data/hmdb51 in MMAction2).
split = 1  # official train/test splits: 1, 2, 3
data_root = 'data/hmdb51/videos'
ann_file_train = f'data/hmdb51/hmdb51_train_split_{split}_videos.txt'
ann_file_val = f'data/hmdb51/hmdb51_val_split_{split}_videos.txt'
train_dataloader = dict(
    dataset=dict(ann_file=ann_file_train, data_prefix=dict(video=data_root)))
val_dataloader = dict(
    dataset=dict(ann_file=ann_file_val, data_prefix=dict(video=data_root)))
test_dataloader = dict(
    dataset=dict(ann_file=ann_file_val, data_prefix=dict(video=data_root)))
