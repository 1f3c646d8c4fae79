"""nn.Modules and the attention they use; nothing here reads files or parses options."""

from naf_cli.modeling.attention import cross_scale_neighborhood_attention
from naf_cli.modeling.interpolation import Interpolation
from naf_cli.modeling.naf import NAF
from naf_cli.modeling.restoration import Denoiser
from naf_cli.modeling.upsampler import Upsampler

__all__ = ["NAF", "Denoiser", "Interpolation", "Upsampler", "cross_scale_neighborhood_attention"]
