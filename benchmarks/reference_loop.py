"""Diagnostic: KernelGAN as a plain single-member training loop of standard torch modules.

Is a kernel-estimation result a property of the algorithm or of our batched trainer
(train/kernelgan.py: grouped convolutions, our own spectral norm, BatchNorm and Adam)? This script
trains the same model the textbook way - ``nn.Conv2d`` layers, ``nn.utils.spectral_norm``,
``nn.BatchNorm2d``, ``torch.optim.Adam`` with ``StepLR`` - with the reference settings
(../shared/design.md section 3), our crop maps and loss functions, and prints the finalised
kernel's sigmas and what our stability guard (:func:`kernelgan.diagnose_kernel`) would say of it
every ``--every`` iterations. It is slow (about 4 it/s on one CPU core) and not used by
the engine.

    python benchmarks/reference_loop.py --kernel narrow --iterations 1250 --photo set14/man.png --every 50
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernel_recovery import KERNELS, load_hr
from mkgan_engine.train import losses, sampler
from mkgan_engine.train.config import KernelGANConfig
from mkgan_engine.train.degradation import anisotropic_gaussian, degrade
from mkgan_engine.train.generator import output_size
from mkgan_engine.train.kernel import finalize_kernel, kernel_moments
from mkgan_engine.train.kernelgan import diagnose_kernel
from mkgan_engine.train.masked_crop import gather_crops


class Generator(nn.Module):
    """Deep linear generator: colour channels as a batch of grey images, last 1x1 conv strided."""

    def __init__(self, c: KernelGANConfig) -> None:
        super().__init__()
        sizes, n = c.g_kernel_sizes, len(c.g_kernel_sizes)
        self.layers = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else c.g_channels, 1 if i == n - 1 else c.g_channels, k, stride=2 if i == n - 1 else 1, bias=False)
            for i, k in enumerate(sizes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, 3, H, W) -> (1, 3, h, w)
        x = x.transpose(0, 1)
        for layer in self.layers:
            x = layer(x)
        return x.transpose(0, 1)

    def kernel(self) -> torch.Tensor:
        """Effective correlation kernel (K, K): a delta through every layer at stride 1, flipped."""
        k = sum(layer.kernel_size[0] - 1 for layer in self.layers) + 1
        y = torch.zeros(1, 1, 2 * k - 1, 2 * k - 1)
        y[0, 0, k - 1, k - 1] = 1.0
        for layer in self.layers:
            y = F.conv2d(y, layer.weight)
        return y[0, 0].flip(0, 1)


def discriminator(c: KernelGANConfig) -> nn.Module:
    """SN 7x7 conv, (layers - 2) x [SN 1x1, BatchNorm, ReLU], SN 1x1, sigmoid."""
    sn = nn.utils.spectral_norm
    body: list[nn.Module] = [sn(nn.Conv2d(3, c.d_channels, c.d_kernel_size))]
    for _ in range(c.d_layers - 2):
        body += [sn(nn.Conv2d(c.d_channels, c.d_channels, 1)), nn.BatchNorm2d(c.d_channels), nn.ReLU(True)]
    return nn.Sequential(*body, sn(nn.Conv2d(c.d_channels, 1, 1)), nn.Sigmoid())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", choices=sorted(KERNELS), default="narrow")
    parser.add_argument("--photo", default="set14/man.png")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=250, help="print the kernel and the stability guard's verdict this often")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    c = KernelGANConfig.preset("paper")

    truth = anisotropic_gaussian(13, *KERNELS[args.kernel], 2)
    lr_image = degrade(load_hr(args.photo), truth, 2)
    image = torch.from_numpy(np.ascontiguousarray(lr_image.transpose(2, 0, 1)))[None]
    d_crop = output_size(c.crop_size, c.g_kernel_sizes)  # 26: the generator's output side
    map_g, map_d = sampler.region_crop_maps(lr_image, None, c.crop_size, d_crop)
    cdf_g, cdf_d = sampler.build_cdfs([map_g.prob]), sampler.build_cdfs([map_d.prob])

    g, d = Generator(c), discriminator(c)
    for m in g.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight, 0.1)
    with torch.no_grad():  # start with a positive kernel sum (see train/generator.py)
        if g.kernel().sum() < 0:
            g.layers[-1].weight.neg_()
    for m in d.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight_orig, 0.1)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    opt_g = torch.optim.Adam(g.parameters(), c.lr_g, betas=c.betas)
    opt_d = torch.optim.Adam(d.parameters(), c.lr_d, betas=c.betas)
    sched = [torch.optim.lr_scheduler.StepLR(o, c.lr_decay_every, c.lr_decay_factor) for o in (opt_g, opt_d)]
    mask = losses.boundary_mask(13)

    w_bicubic, w_cent, w_sparse, below, similar = c.bicubic_weight, 0.0, 0.0, 0, False
    for it in range(1, args.iterations + 1):
        g_in = gather_crops(image, cdf_g, torch.rand(1, 1), c.crop_size)[0][:, 0]
        real = gather_crops(image, cdf_d, torch.rand(1, 1), d_crop)[0][:, 0]
        real = real + torch.randn_like(real) * c.d_input_noise_std

        opt_g.zero_grad()
        fake, k = g(g_in), g.kernel()[None]
        bicubic = losses.downscale_loss(g_in, fake)[0]
        loss_g = (d(fake) - 1).abs().mean() + w_bicubic * bicubic + (
            c.sum2one_weight * losses.sum_to_one(k) + c.boundaries_weight * losses.boundaries(k, mask)
            + w_cent * losses.centralized(k) + w_sparse * losses.sparsity(k)
        )[0]
        loss_g.backward()
        opt_g.step()

        opt_d.zero_grad()
        fake = g(g_in).detach()
        fake = fake + torch.randn_like(fake) * c.d_input_noise_std
        loss_d = 0.5 * ((d(real) - 1).abs().mean() + d(fake).abs().mean())
        loss_d.backward()
        opt_d.step()
        for s in sched:
            s.step()

        # Schedule (train/schedule.py): decay the DownScale weight once G is close to bicubic.
        below = below + 1 if bicubic.item() < c.bicubic_threshold else 0
        similar = similar or below >= c.bicubic_patience
        if similar and it % c.bicubic_decay_every == 0:
            w_bicubic = max(w_bicubic / c.bicubic_decay, c.bicubic_floor)
            if w_bicubic < c.regularizers_on_below:
                w_cent, w_sparse = c.centralized_weight, c.sparse_weight
        if it % args.every == 0:
            raw = g.kernel().detach().numpy()
            a, b, theta = kernel_moments(finalize_kernel(raw, 2, c.kernel_keep_top))
            print(f"iteration {it}: sigmas {a:.2f}/{b:.2f} px at {np.degrees(theta):.0f} deg, "
                  f"loss_d {loss_d.item():.3f}, DownScale weight {w_bicubic:g}, guard: {diagnose_kernel(raw) or 'ok'}", flush=True)
    ta, tb, tt = kernel_moments(truth)
    print(f"truth: sigmas {ta:.2f}/{tb:.2f} px at {np.degrees(tt):.0f} deg")


if __name__ == "__main__":
    main()
