"""PCA pictures of features: one basis shared by every image, three components to RGB."""

from naf_cli.pca.basis import PCABasis, fit_basis, fit_on, sample_positions
from naf_cli.pca.panels import Panel, compose

__all__ = ["PCABasis", "Panel", "compose", "fit_basis", "fit_on", "sample_positions"]
