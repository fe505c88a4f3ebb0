"""The sampler: the sigma table of spec 5.1, the conditioning substitution, guidance and seeds."""

from __future__ import annotations

import math

import pytest
import torch

from cosmos_plugins.predict1 import sampler as S

# (i, sigma, c_noise) from cosmos-predict1-spec.md section 5.1.
TABLE = [
    (0, 79.99998, 1.09551), (1, 67.12598, 1.05164), (2, 56.07026, 1.00665), (3, 46.61349, 0.96047),
    (4, 38.55819, 0.91304), (5, 31.72677, 0.86429), (6, 25.96020, 0.81414), (7, 21.11641, 0.76251),
    (8, 17.06888, 0.70931), (9, 13.70544, 0.65445), (10, 10.92685, 0.59781), (11, 8.645810, 0.53927),
    (12, 6.785737, 0.47871), (13, 5.279787, 0.41597), (14, 4.069893, 0.35090), (15, 3.105875, 0.28332),
    (16, 2.344599, 0.21303), (17, 1.749212, 0.13979), (18, 1.288421, 0.063354), (19, 0.935854, -0.016574),
    (20, 0.669440, -0.100329), (21, 0.470869, -0.188294), (22, 0.325086, -0.280916), (23, 0.219838, -0.378716),
    (24, 0.145261, -0.482306), (25, 0.093512, -0.592417), (26, 0.058444, -0.709923), (27, 0.035311, -0.835892),
    (28, 0.020516, -0.971636), (29, 0.011388, -1.118801), (30, 0.0059883, -1.279489), (31, 0.0029506, -1.456436),
    (32, 0.0013425, -1.653309), (33, 0.00055271, -1.875170), (34, 0.00020000, -2.129298),
]


def test_35_sigmas_match_spec_table():
    sig = S.karras_sigmas(35)
    assert sig.dtype == torch.float32 and sig.shape == (36,)
    assert sig[-1].item() == 0.0
    for i, sigma, cn in TABLE:
        # the spec's table has 5 significant figures (half a unit: 1e-5 relative; fp32 adds 6e-8)
        assert sig[i].item() == pytest.approx(sigma, rel=2e-5), i
        # c_noise = log(sigma)/4 printed to 7 decimals: the sigma's 1e-5 relative becomes 2.5e-6 absolute
        assert S.c_noise(sig[i]).item() == pytest.approx(cn, rel=2e-4, abs=2e-6), i


def test_substitution_released_for_last_two_steps():
    sig = S.karras_sigmas(35)
    active = [S.AUGMENT_SIGMA < sig[i].to(torch.bfloat16).item() for i in range(35)]
    assert active == [True] * 33 + [False, False]


def test_init_noise_sigma():
    assert S.INIT_NOISE_SIGMA == pytest.approx(80.00624975, rel=1e-9)


def test_preconditioning_identities():
    for s in (80.0, 1.0, 0.01):
        assert S.c_skip(s) + (S.c_out(s) / S.SIGMA_DATA) ** 2 == pytest.approx(1.0)
        assert S.c_in(s) == pytest.approx(1 / math.sqrt(s * s + 0.25))


def _oracle(target: torch.Tensor):
    """A perfect denoiser for a single clean latent: F such that c_skip x + c_out F == target."""
    sig = S.karras_sigmas(64)
    cn = {round(S.c_noise(s).to(torch.bfloat16).item(), 6): s.item() for s in sig[:-1]}

    def model_fn(x_scaled, t):
        s = cn.get(round(t.float().item(), 6))
        if s is None:  # the bf16 c_noise of a sigma not in the 64-step table: recover it
            s = math.exp(4 * t.float().item())
        x = x_scaled.float() / S.c_in(s)
        f = (target - S.c_skip(s) * x) / S.c_out(s)
        return f, f

    return model_fn


@pytest.mark.parametrize("numerics", S.NUMERICS)
def test_oracle_denoiser_recovers_target(numerics):
    torch.manual_seed(0)
    shape = (1, 4, 3, 4, 4)
    target = torch.randn(shape) * 0.5
    cond = torch.zeros(shape)
    out = S.sample(_oracle(target), noise=S.initial_noise(shape, seed=3, device="cpu"), condition_latent=cond,
                   num_condition_frames=0, augment=torch.zeros(shape), num_steps=12, guidance=7.0, numerics=numerics)
    assert out.dtype == torch.bfloat16
    # an exact oracle: only the bf16 state remains, 2^-8 relative of |target| <= ~2 (0.008) plus its flips per step
    assert torch.allclose(out.float(), target, atol=0.02)


@pytest.mark.parametrize("numerics", S.NUMERICS)
def test_condition_frames_pinned_until_released(numerics):
    """With a network that predicts garbage, the conditioned frames still come out as the clean latent,
    as long as the substitution stays active (sigma_min above 0.001 here)."""
    torch.manual_seed(1)
    shape = (1, 4, 4, 4, 4)
    latent = torch.randn(shape) * 0.5

    def junk(x_scaled, t):
        f = torch.full_like(x_scaled, 3.0)
        return f, -f

    seen = []
    with torch.inference_mode():
        sig_sched = S.karras_sigmas
        try:
            S.karras_sigmas = lambda n: sig_sched(n, sigma_min=0.01)
            out = S.sample(junk, noise=S.initial_noise(shape, seed=0, device="cpu"), condition_latent=latent,
                           num_condition_frames=2, augment=torch.randn(shape), num_steps=8, guidance=7.0,
                           numerics=numerics, on_step=seen.append)
        finally:
            S.karras_sigmas = sig_sched
    assert [s.index for s in seen] == list(range(8))
    if numerics == "fp32":
        # pinned exactly in fp32; the returned bf16 latent rounds |latent| <= ~2 by 2^-8 relative (<= 0.008)
        assert torch.allclose(out[:, :, :2].float(), latent[:, :, :2], atol=0.02)
    else:
        # the original's latent / c_out - c_skip * x: x0 = latent + c_skip (1 - c_out) x_in at the last step
        s = 0.01
        x_in = latent * S.c_in(S.AUGMENT_SIGMA) / S.c_in(s)
        expected = latent + S.c_skip(s) * (1 - S.c_out(s)) * x_in
        # bf16 throughout the original's substitution: several 2^-8 roundings of values up to ~2 per step
        assert torch.allclose(out[:, :, :2].float(), expected[:, :, :2], atol=0.05)
        assert not torch.allclose(out[:, :, :2].float(), latent[:, :, :2], atol=0.1)
    assert not torch.allclose(out[:, :, 2:].float(), latent[:, :, 2:], atol=0.5)


def test_guidance_formula():
    c, u = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    assert torch.equal(S.apply_guidance(c, u, 7.0), c + 7.0 * (c - u))
    assert torch.equal(S.apply_guidance(c, u, 0.0), c)


def test_seed_independent_of_global_rng_history():
    a = S.initial_noise((2, 3, 4), seed=42, device="cpu")
    torch.randn(1000)  # anything consuming the global generator
    torch.manual_seed(999)
    b = S.initial_noise((2, 3, 4), seed=42, device="cpu")
    c = S.initial_noise((2, 3, 4), seed=43, device="cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.bfloat16
    n1 = S.augment_noise((2, 3), seed=5, device="cpu")
    n2 = S.augment_noise((2, 3), seed=5, device="cpu")
    assert torch.equal(n1, n2) and n1.dtype == torch.float32


# -- a network whose two guidance branches differ, and what it was shown -------------------------------------------

def _karras64(num_steps: int) -> list[float]:
    """The Karras rho-7 table of spec section 5.1 in float64, computed here from its formula (not by the sampler)."""
    hi, lo = 80.0 ** (1 / 7), 0.0002 ** (1 / 7)
    return [(hi + i / (num_steps - 1) * (lo - hi)) ** 7 for i in range(num_steps)] + [0.0]


def _c_in(s):  # EDM preconditioning with sigma_data 0.5 (spec section 5)
    return 1 / math.sqrt(s * s + 0.25)


def _c_skip(s):
    return 0.25 / (s * s + 0.25)


def _c_out(s):
    return s * 0.5 / math.sqrt(s * s + 0.25)


def _bf16(v: float) -> float:
    return torch.tensor(v, dtype=torch.bfloat16).item()


class _TwoBranchNet:
    """F_cond = 0.3 x + b_c and F_uncond = -0.2 x + b_u, with b_c, b_u independent draws of scale 2: the branches
    differ everywhere (by ~3 per element), so any mix-up of them moves the guided output by (1 + 2w) times that."""

    def __init__(self, shape):
        g = torch.Generator().manual_seed(11)
        self.b_c = 2 * torch.randn(shape, generator=g)
        self.b_u = 2 * torch.randn(shape, generator=g)
        self.seen: list[tuple[torch.Tensor, float]] = []  # (x_scaled as given, fp64; c_noise)

    def branches(self, x_scaled: torch.Tensor):
        x = x_scaled.double()
        return 0.3 * x + self.b_c.double(), -0.2 * x + self.b_u.double()

    def __call__(self, x_scaled, t, uncond=True):
        self.seen.append((x_scaled.double().clone(), float(t.double().reshape(-1)[0])))
        f_c, f_u = self.branches(x_scaled)
        return f_c.float(), (f_u.float() if uncond else None)


@pytest.mark.parametrize("numerics", S.NUMERICS)
def test_network_sees_clean_condition_and_guided_steps_follow_the_formula(numerics):
    """Spec sections 4.3-5: at every step the network gets c_noise(sigma); while sigma > 0.001 the condition frames
    come in as the clean latent seen at noise level 0.001 (c_in(0.001) (latent + 0.001 n)), the others as
    c_in(sigma) x_t; the state moves by the EDM Euler step from the guided F = F_c + w (F_c - F_u); the condition
    frames' prediction is pinned so that x0 is the clean latent (fp32) or the original's latent / c_out - c_skip x
    (original), which the network sees once the substitution is released (here: the last step).

    Everything expected is computed here in float64 from the spec's formulas and from the inputs the network was
    given. Tolerances are bf16 rounding: the network's input is bf16 in both numerics (relative step 2^-8, so a
    rounding moves a value by at most 2^-9 of it); the fp32 path rounds only that input, which we read back, so
    a prediction from it is off by at most 2^-9 of |x_in| plus the observation's own 2^-9: we allow 2^-8 of the sum.
    The original keeps its state, its F and its c_in/c_out/c_skip in bf16 as well: a few roundings of each term, so
    2^-6 of the terms' magnitudes. A swapped guidance moves F by (1 + 2w) |F_c - F_u|, about 45 here.
    """
    steps, w, n_cond = 6, 7.0, 2
    shape = (1, 3, 4, 2, 3)
    g = torch.Generator().manual_seed(5)
    latent = (0.5 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    augment = torch.randn(shape, generator=g)
    noise = S.initial_noise(shape, seed=9, device="cpu")
    net = _TwoBranchNet(shape)
    out = S.sample(net, noise=noise, condition_latent=latent, num_condition_frames=n_cond, augment=augment,
                   num_steps=steps, guidance=w, numerics=numerics)
    sig = _karras64(steps)
    original = numerics == "original"
    rel = 2.0**-6 if original else 2.0**-8
    lat, aug = latent.double(), augment.double()
    cond, free = (slice(None), slice(None), slice(0, n_cond)), (slice(None), slice(None), slice(n_cond, None))
    active = [s > 0.001 for s in sig[:steps]]
    assert active == [True] * (steps - 1) + [False]  # the last step (sigma 0.0002) is released
    assert len(net.seen) == steps

    def close(got, want, scale, what):
        err = (got - want).abs()
        bound = rel * scale + 1e-6
        assert bool((err <= bound).all()), f"{what}: worst {float((err - bound).max()):.3g} past the bound"

    for i, (x_scaled, t) in enumerate(net.seen):
        s = sig[i]
        assert t == pytest.approx(0.25 * math.log(s), rel=2.0**-7, abs=2.0**-8), i  # c_noise, bf16 in original
        if active[i]:
            clean = _c_in(0.001) * (lat + 0.001 * aug)
            close(x_scaled[cond], clean[cond], clean[cond].abs(), f"condition frames' input at step {i}")
    close(net.seen[0][0][free], _c_in(sig[0]) * noise.double()[free], (_c_in(sig[0]) * noise.double()[free]).abs(),
          "first input")

    # The state: from what the network saw at step i (x_in = x_scaled / c_in) and its two outputs there, the
    # Euler step of spec section 5 gives the next input; the last step's gives the output.
    for i in range(steps):
        s, s_next = sig[i], sig[i + 1]
        x_scaled = net.seen[i][0]
        x_in = x_scaled / _c_in(s)
        f_c, f_u = net.branches(x_scaled)
        f = f_c + w * (f_c - f_u)
        x0 = _c_skip(s) * x_in + _c_out(s) * f
        if active[i]:
            sb = _bf16(s) if original else s  # the original divides by a bf16 c_in here
            x_in[cond] = (_c_in(0.001) * (lat + 0.001 * aug) / _c_in(sb))[cond]
            if original:  # its substituted prediction latent / c_out - c_skip x_in, with bf16 scalars
                f_lat = lat / _c_out(sb) - _c_skip(sb) * x_in
                x0[cond] = (_c_skip(s) * x_in + _c_out(s) * f_lat)[cond]
            else:
                x0[cond] = lat[cond]
        x_next = x0 + (s_next / s) * (x_in - x0)
        scale = (x_in.abs() + _c_out(s) * (f_c.abs() * (1 + w) + w * f_u.abs()) + x_next.abs())
        if i + 1 < steps:
            seen_next = net.seen[i + 1][0] / _c_in(s_next)
            region = (slice(None),) if not active[i + 1] else free  # the condition frames are substituted again
            close(seen_next[region], x_next[region], scale[region], f"input of step {i + 1}")
        else:
            close(out.double(), x_next, scale, "output")
    assert out.dtype == torch.bfloat16
