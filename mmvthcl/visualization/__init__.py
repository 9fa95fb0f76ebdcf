from .icm import (ICMClips, ICMResult, compute_icm, correspondence,
                  icm_crop_size, icm_sampler, load_icm_clips, video_icm)
from .icm_render import (heatmap_overlay, render_icm_animation,
                         render_icm_grid, save_gif, save_image, stack_images)

__all__ = [
    'ICMClips', 'ICMResult', 'compute_icm', 'correspondence', 'icm_crop_size',
    'icm_sampler', 'load_icm_clips', 'video_icm', 'heatmap_overlay',
    'render_icm_animation', 'render_icm_grid', 'save_gif', 'save_image',
    'stack_images'
]
