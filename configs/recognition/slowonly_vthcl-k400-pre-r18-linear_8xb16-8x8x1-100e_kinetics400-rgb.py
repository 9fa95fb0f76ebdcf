# The R50 linear probe with a VTHCL-pretrained SlowOnly-R18 (8x8) encoder:
#   python tools/export_backbone.py work_dirs/vthcl_r18_k400/epoch_100.pth \
#       work_dirs/vthcl_r18_k400/vthcl_r18_k400_backbone.pth
_base_ = ['./slowonly_vthcl-k400-pre-r50-linear_8xb16-8x8x1-100e_'
          'kinetics400-rgb.py']

load_from = 'work_dirs/vthcl_r18_k400/vthcl_r18_k400_backbone.pth'
model = dict(backbone=dict(depth=18), cls_head=dict(in_channels=512))
