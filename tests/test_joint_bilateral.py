"""JBU and JBF against their formulas written out pixel by pixel (tiny sizes, plain Python loops)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from naf_cli.modeling.joint_bilateral import JointBilateralFilter, JointBilateralUpsampling, resize_guidance


def brute_jbu(image, features, size, sigma_s, sigma_r, radius):
    _, C, h, w = features.shape
    H, W = size
    guide_out, guide_cells = resize_guidance(image, size)[0], resize_guidance(image, (h, w))[0]
    out = torch.zeros(C, H, W, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            py, px = (y + 0.5) * h / H - 0.5, (x + 0.5) * w / W - 0.5
            cy, cx = min(max(math.floor(py + 0.5), 0), h - 1), min(max(math.floor(px + 0.5), 0), w - 1)
            total, norm = torch.zeros(C, dtype=torch.float64), 0.0
            for qy in range(cy - radius, cy + radius + 1):
                for qx in range(cx - radius, cx + radius + 1):
                    if not (0 <= qy < h and 0 <= qx < w):
                        continue
                    spatial = ((py - qy) ** 2 + (px - qx) ** 2) / (2 * sigma_s ** 2)
                    colour = float(((guide_out[:, y, x] - guide_cells[:, qy, qx]) ** 2).sum()) / (2 * sigma_r ** 2)
                    weight = math.exp(-spatial - colour)
                    total += weight * features[0, :, qy, qx].double()
                    norm += weight
            out[:, y, x] = total / norm
    return out


def brute_jbf(image, features, size, sigma_s, sigma_r, radius):
    H, W = size
    smooth = F.interpolate(features, size=size, mode="bilinear", align_corners=False)[0].double()
    guide = resize_guidance(image, size)[0]
    out = torch.zeros_like(smooth)
    for y in range(H):
        for x in range(W):
            total, norm = torch.zeros(smooth.shape[0], dtype=torch.float64), 0.0
            for qy in range(y - radius, y + radius + 1):
                for qx in range(x - radius, x + radius + 1):
                    if not (0 <= qy < H and 0 <= qx < W):
                        continue
                    colour = float(((guide[:, y, x] - guide[:, qy, qx]) ** 2).sum())
                    weight = math.exp(-((qy - y) ** 2 + (qx - x) ** 2) / (2 * sigma_s ** 2) - colour / (2 * sigma_r ** 2))
                    total += weight * smooth[:, qy, qx]
                    norm += weight
            out[:, y, x] = total / norm
    return out


def window_sum(smooth, guide, sigma_s, sigma_r, radius):
    """The JBF formula vectorised over pixels: one pass per window offset over the bilinear map."""
    H, W = smooth.shape[-2:]
    logits, values = [], []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            ys, xs = torch.arange(H) + dy, torch.arange(W) + dx
            inside = ((ys >= 0) & (ys < H))[:, None] & ((xs >= 0) & (xs < W))[None, :]
            ys, xs = ys.clamp(0, H - 1), xs.clamp(0, W - 1)
            other = guide[:, :, ys][:, :, :, xs]
            logit = -(dy * dy + dx * dx) / (2 * sigma_s ** 2) - (guide - other).square().sum(1, keepdim=True) / (2 * sigma_r ** 2)
            logits.append(logit.masked_fill(~inside, float("-inf")).double())
            values.append(smooth[:, :, ys][:, :, :, xs].double())
    weights = torch.softmax(torch.stack(logits), dim=0)
    return sum(weight * value for weight, value in zip(weights, values, strict=True)).float()


CASES = [((3, 4), (7, 9), (14, 18)), ((4, 4), (8, 8), (8, 8)), ((5, 3), (5, 3), (20, 12)), ((2, 5), (9, 11), (5, 5))]


@pytest.mark.parametrize("grid,size,image_size", CASES)
@pytest.mark.parametrize("sigmas,radius", [((1.0, 0.1), 2), ((0.6, 0.5), 1), ((2.0, 0.05), 3)])
def test_jbu_equals_its_formula(grid, size, image_size, sigmas, radius):
    torch.manual_seed(0)
    image, features = torch.rand(1, 3, *image_size), torch.randn(1, 4, *grid)
    module = JointBilateralUpsampling(*sigmas, radius=radius, band_rows=3)
    torch.testing.assert_close(module(image, features, size)[0].double(), brute_jbu(image, features, size, *sigmas, radius),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid,size,image_size", CASES)
@pytest.mark.parametrize("sigmas,radius", [((2.0, 0.1), 2), ((1.0, 0.5), 1), ((3.0, 0.05), 3)])
def test_jbf_equals_its_formula(grid, size, image_size, sigmas, radius):
    torch.manual_seed(1)
    image, features = torch.rand(1, 3, *image_size), torch.randn(1, 4, *grid)
    module = JointBilateralFilter(*sigmas, radius=radius, band_rows=2)
    torch.testing.assert_close(module(image, features, size)[0].double(), brute_jbf(image, features, size, *sigmas, radius),
                               atol=1e-5, rtol=1e-5)


def test_tiny_range_sigmas_do_not_divide_by_zero():
    """exp(-150) underflows float32; the normalised weights must still sum to one."""
    image, features = torch.rand(1, 3, 16, 16), torch.randn(1, 3, 4, 4)
    for module in (JointBilateralUpsampling(1.0, 1e-3), JointBilateralFilter(2.0, 1e-3)):
        out = module(image, features, (16, 16))
        assert torch.isfinite(out).all()
        assert out.min() >= features.min() - 1e-5 and out.max() <= features.max() + 1e-5  # a convex mix


def test_an_edge_in_the_guidance_is_kept_by_jbu_and_blurred_by_bilinear():
    """A vertical colour edge through the middle of a cell: JBU follows the image."""
    image = torch.zeros(1, 3, 32, 32)
    image[..., 12:] = 1.0  # the edge at x = 12, inside cell 1 of a 4-cell grid
    features = (resize_guidance(image, (4, 4))[:, :1] > 0.5).float()  # cell value: its majority colour
    out = JointBilateralUpsampling(1.0, 0.1)(image, features, (32, 32))
    bilinear = F.interpolate(features, size=(32, 32), mode="bilinear", align_corners=False)
    truth = image[:, :1]
    assert (out - truth).abs().mean() < 0.5 * (bilinear - truth).abs().mean()


@pytest.mark.parametrize("grid,size", [((3, 4), (48, 64)), ((5, 7), (37, 53)), ((6, 6), (12, 12))])
def test_jbf_with_the_shipped_settings_equals_the_window_sum_over_the_bilinear_map(grid, size):
    """The fast route (window weights folded onto cells) against the plain one (every window
    pixel of the bilinear map read), at the shipped sigmas and their 33 x 33 window."""
    from naf_cli.upsamplers import JBF_SIGMAS

    torch.manual_seed(2)
    image, features = torch.rand(1, 3, 40, 50), torch.randn(2, 6, *grid)
    image = image.expand(2, -1, -1, -1).contiguous()
    module = JointBilateralFilter(*JBF_SIGMAS)
    assert module.radius == 16
    smooth = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
    guide = resize_guidance(image, size)
    plain = window_sum(smooth, guide, module.sigma_spatial, module.sigma_range, module.radius)
    torch.testing.assert_close(module(image, features, size), plain, atol=2e-5, rtol=2e-5)
