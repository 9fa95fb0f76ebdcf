# The R50 AVA v2.2 config with a VTHCL-pretrained SlowOnly-R18 (8x8):
#   python tools/export_backbone.py work_dirs/vthcl_r18_k400/epoch_100.pth \
#       work_dirs/vthcl_r18_k400/vthcl_r18_k400_backbone.pth
_base_ = ['./slowonly_vthcl-k400-pre-r50_8xb16-8x8x1-20e_ava22-rgb.py']

vthcl_checkpoint = 'work_dirs/vthcl_r18_k400/vthcl_r18_k400_backbone.pth'
model = dict(
    init_cfg=dict(checkpoint=vthcl_checkpoint),
    backbone=dict(depth=18),
    roi_head=dict(bbox_head=dict(in_channels=512)))
