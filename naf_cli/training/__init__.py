"""Training NAF on any image folder with any registry backbone."""

from naf_cli.training.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
