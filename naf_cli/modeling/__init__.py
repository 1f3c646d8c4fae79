"""nn.Modules and the attention they use; nothing here reads files or parses options."""

from naf_cli.modeling.attention import cross_scale_neighborhood_attention
from naf_cli.modeling.naf import NAF

__all__ = ["NAF", "cross_scale_neighborhood_attention"]
