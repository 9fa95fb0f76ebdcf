# HMDB-51 split 2; everything else as split 1.
_base_ = ['./slowonly_vthcl-k400-pre-r50_8xb8-8x8x1-100e_hmdb51-split1-rgb.py']

split = 2
ann_file_train = f'data/hmdb51/hmdb51_train_split_{split}_videos.txt'
ann_file_val = f'data/hmdb51/hmdb51_val_split_{split}_videos.txt'
train_dataloader = dict(dataset=dict(ann_file=ann_file_train))
val_dataloader = dict(dataset=dict(ann_file=ann_file_val))
test_dataloader = dict(dataset=dict(ann_file=ann_file_val))
