# VTHCL pretraining of a SlowOnly-R18 (8x8) on Kinetics-400, 8 GPUs x 8 clips.
#   tools/dist_train.sh configs/vthcl_r18_k400.py 8
_base_ = ['./vthcl_r50_k400.py']

model = dict(backbone=dict(depth=18))
