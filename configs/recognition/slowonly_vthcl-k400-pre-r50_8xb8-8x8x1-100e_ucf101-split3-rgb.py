# UCF-101 split 3; everything else as split 1 (weights, schedule, paper
# numbers: see the split-1 config).
_base_ = ['./slowonly_vthcl-k400-pre-r50_8xb8-8x8x1-100e_ucf101-split1-rgb.py']

split = 3
ann_file_train = f'data/ucf101/ucf101_train_split_{split}_videos.txt'
ann_file_val = f'data/ucf101/ucf101_val_split_{split}_videos.txt'
train_dataloader = dict(dataset=dict(ann_file=ann_file_train))
val_dataloader = dict(dataset=dict(ann_file=ann_file_val))
test_dataloader = dict(dataset=dict(ann_file=ann_file_val))
