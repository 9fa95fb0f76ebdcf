from .icm import (ICMClips, ICMResult, compute_icm, correspondence,
                  icm_crop_size, icm_sampler, load_icm_clips)
from .icm_render import (heatmap_overlay, render_icm_animation,
                         render_icm_grid, save_gif, save_image, stack_images)

__all__ = [
    'ICMClips', 'ICMResult', 'compute_icm', 'correspondence', 'icm_crop_size',
    'icm_sampler', 'load_icm_clips', 'heatmap_overlay',
    'render_icm_animation', 'render_icm_grid', 'save_gif', 'save_image',
    'stack_images'
]
