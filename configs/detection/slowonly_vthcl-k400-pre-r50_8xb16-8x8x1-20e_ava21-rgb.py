# AVA v2.1 spatio-temporal detection with a VTHCL-pretrained SlowOnly-R50
# (8x8) backbone in MMAction2's FastRCNN.
#
# The encoder comes from VTHCL pretraining (configs/vthcl_r50_k400.py),
# exported with backbone.* keys:
#   python tools/export_backbone.py work_dirs/vthcl_r50_k400/epoch_100.pth \
#       work_dirs/vthcl_r50_k400/vthcl_r50_k400_backbone.pth
# then
#   tools/dist_train.sh configs/detection/<this file> 8
#
# MMAction2 ships its 8x8 SlowOnly AVA v2.1 recipe as an R101 config; every
# setting of it but the depth (model, 8x8 AVA pipelines, data layout under
# data/ava, AVAMetric, 20-epoch schedule) is the one of the R50 4x16 config,
# so it is the base here and only the depth and the weights change.
# Stride (1, 2, 2, 1) of res5 changes no parameter: the export loads as is.
_base_ = ('mmaction::detection/slowonly/'
          'slowonly_kinetics400-pretrained-r101_8xb16-8x8x1-20e_ava21-rgb.py')

custom_imports = dict(imports=['mmvthcl'], allow_failed_imports=False)
default_scope = 'mmaction'

# The ONE field that takes the pretrained encoder (prefixed export): the
# detector-level init_cfg, as in the stock config. A backbone-level init_cfg
# would be ignored (ResNet3d overrides init_weights).
vthcl_checkpoint = 'work_dirs/vthcl_r50_k400/vthcl_r50_k400_backbone.pth'
# The stock base's supervised K400 download, unused (init_cfg is replaced
# below); set to None so that no URL is left in the merged config
# (tests/test_plugin.py: no shipped config may reach the network).
url = None

model = dict(
    init_cfg=dict(type='Pretrained', checkpoint=vthcl_checkpoint),
    backbone=dict(depth=50, pretrained=None),
    roi_head=dict(bbox_head=dict(in_channels=2048)))

randomness = dict(seed=0)  # as the pretraining configs
