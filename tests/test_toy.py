"""genlab.toy: each family learns (its loss falls, it beats one fitted Gaussian on two datasets), the
same seed gives the same samples, the energy distance is the E-statistic, and bad points or settings
raise errors a person can read.

Budgets are small (n = 1000, a few hundred steps) so the module runs in well under a minute on two
cores; `python -m genlab.toy bench` checks the real bar (a third of the Gaussian's score at 3000 steps).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import genlab
from genlab import toy

# Steps at which each family, at its defaults, already beats the Gaussian fit on moons and on gaussians
# (ratios measured at these budgets, moons / gaussians: VAE 0.44 / 0.68, GAN 0.36 / 0.09, flow 0.04 / 0.21,
# diffusion 0.69 / 0.83; the Gaussian scores 1).
BUDGETS = {"vae": 300, "gan": 500, "flow": 150, "diffusion": 300}
FALLING = {"vae": "neg_elbo", "flow": "nll", "diffusion": "mse"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny MLPs run fastest on one thread (and do not fight a busy machine's other work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", list(toy.FAMILIES))
def test_family_learns_and_beats_a_gaussian_on_two_datasets(family):
    for name in ("moons", "gaussians"):
        data, fresh = toy.dataset(name, n=1000, seed=0), toy.dataset(name, n=1000, seed=1)
        model = toy.make(family, seed=0)
        untrained = toy.energy_distance(model.sample(1000, seed=3), fresh) if family == "gan" else None
        states = list(toy.train(model, data, steps=BUDGETS[family], every=50))
        assert [s.step for s in states] == list(range(50, BUDGETS[family] + 1, 50))
        assert set(states[-1].losses) == set(model.loss_names)
        if family == "gan":
            # A GAN's losses are a game, not a descent: the discriminator beats chance (2 log 2 for the
            # non-saturating loss) at once, and the samples move to the data.
            assert states[0].losses["discriminator"] < 2 * math.log(2)
        else:
            loss = FALLING[family]
            assert states[-1].losses[loss] < states[0].losses[loss] - 0.05, (name, [s.losses[loss] for s in states])
        distance = toy.energy_distance(model.sample(1000, seed=3), fresh)
        baseline = toy.energy_distance(toy.gaussian_fit(data, n=1000, seed=2), fresh)
        assert distance < baseline, (name, distance, baseline)
        if untrained is not None:
            assert distance < untrained / 5


@pytest.mark.parametrize("family", list(toy.FAMILIES))
def test_same_seed_same_samples_and_resuming_is_seamless(family):
    data = toy.dataset("moons", n=300, seed=0)
    first, second, resumed = (toy.make(family, seed=7, width=16) for _ in range(3))
    torch.manual_seed(123)
    expected_global = torch.rand(3)
    torch.manual_seed(123)
    list(toy.train(first, data, steps=40, every=20))
    assert torch.equal(torch.rand(3), expected_global)  # nothing read (or advanced) torch's global RNG
    list(toy.train(second, data, steps=40, every=40))
    list(toy.train(resumed, data, steps=15, every=10))
    list(toy.train(resumed, data, steps=25, every=10))
    assert resumed.step == 40
    samples = first.sample(200, seed=1)
    assert samples.shape == (200, 2) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, second.sample(200, seed=1))
    np.testing.assert_array_equal(samples, resumed.sample(200, seed=1))
    assert not np.array_equal(samples, first.sample(200, seed=2))
    other = toy.make(family, seed=8, width=16)
    list(toy.train(other, data, steps=40, every=40))
    assert not np.array_equal(samples, other.sample(200, seed=1))


def test_datasets_are_seeded_float32_and_in_view():
    for name in toy.DATASETS:
        points = toy.dataset(name, n=500, seed=3)
        assert points.shape == (500, 2) and points.dtype == np.float32, name
        assert np.abs(points).max() < 4, name
        np.testing.assert_array_equal(points, toy.dataset(name, n=500, seed=3))
        assert not np.array_equal(points, toy.dataset(name, n=500, seed=4))
    own = [[0.0, 1.0], [2.0, 3.0]] * 10
    assert toy.dataset(own).shape == (20, 2)


def test_energy_distance_is_the_e_statistic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.normal(1.0, 1.0, size=(40, 2))
    pair = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    expected = 2 * pair(x, y).mean() - pair(x, x).sum() / (30 * 29) - pair(y, y).sum() / (40 * 39)
    assert toy.energy_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert toy.energy_distance(x, y) == pytest.approx(toy.energy_distance(y, x), rel=1e-6)
    same = toy.energy_distance(toy.dataset("moons", 2000, seed=0), toy.dataset("moons", 2000, seed=1))
    assert abs(same) < 0.004
    shifted = toy.energy_distance(toy.dataset("moons", 2000, seed=0) + 0.5, toy.dataset("moons", 2000, seed=1))
    assert shifted > 0.1
    # a model that collapsed to one spot still gets a (bad) score
    assert toy.energy_distance(np.zeros((50, 2)), y) > 0.5


def test_family_views():
    data = toy.dataset("gaussians", n=500, seed=0)
    models = {family: toy.make(family, seed=0, width=32) for family in toy.FAMILIES}
    for _ in toy.train_all(models, data, steps=60, every=30):
        pass
    assert all(model.step == 60 for model in models.values())
    mu, sigma = models["vae"].encode(data)
    assert mu.shape == sigma.shape == (500, 2) and (sigma > 0).all()
    assert models["vae"].decode_means(100).shape == (100, 2)
    belief = models["gan"].discriminator(data)
    assert belief.shape == (500,) and ((belief > 0) & (belief < 1)).all()
    flow = models["flow"]
    # an exact density integrates to 1 (a grid over a window that holds nearly all the mass)
    xs = np.linspace(-6, 6, 241, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    assert np.exp(flow.log_density(grid)).sum() * (xs[1] - xs[0]) ** 2 == pytest.approx(1.0, abs=0.03)
    z = flow.to_base(data)
    with torch.no_grad(), flow.averaged():
        back = flow.to_data(flow.flow().transform.inv(torch.from_numpy(z)))
    np.testing.assert_allclose(back, data, atol=1e-3)  # pulled back and pushed forward again
    paths = models["diffusion"].trajectories(n=5, seed=4)
    steps = models["diffusion"].config.timesteps
    assert paths.x_t.shape == (steps + 1, 5, 2) and paths.pred_x0.shape == (steps, 5, 2)
    np.testing.assert_allclose(paths.x_t[-1], models["diffusion"].sample(5, seed=4), atol=1e-5)  # the same sampler
    deterministic = models["diffusion"].trajectories(n=5, seed=4, sampler="ddim")
    np.testing.assert_array_equal(deterministic.x_t[0], paths.x_t[0])  # same x_T, another path


@pytest.mark.parametrize("points, message", [
    (np.zeros((3, 2)) + np.arange(3)[:, None], "at least 16 points"),
    (np.zeros((50, 3)), r"\(n, 2\) array"),
    (np.zeros(50), r"\(n, 2\) array"),
    (np.where(np.arange(100)[:, None] == 7, np.nan, np.arange(200.0).reshape(100, 2)), "NaN or infinite"),
    (np.where(np.arange(100)[:, None] == 3, np.inf, np.arange(200.0).reshape(100, 2)), "NaN or infinite"),
    (np.arange(200.0).reshape(100, 2) * 1e9, "coordinates up to"),
    (np.ones((100, 2)), "one spot"),
    ([[0, 1], [2]] * 10, "x, y numbers"),
    ([["a", "b"]] * 20, "x, y numbers"),
])
def test_bad_points_raise_readable_errors(points, message):
    model = toy.make("vae")
    with pytest.raises(genlab.InputError, match=message):
        next(toy.train(model, points, steps=10))
    with pytest.raises(genlab.InputError, match=message):
        toy.dataset(points)


@pytest.mark.parametrize("call, message", [
    (lambda: toy.make("autoregressive"), "unknown family 'autoregressive'; choose one of .*vae"),
    (lambda: toy.dataset("spirals"), "unknown dataset 'spirals'; choose one of .*moons"),
    (lambda: toy.dataset("moons", n=5), "n must be between"),
    (lambda: toy.make("vae", lr=-1), "lr must be between"),
    (lambda: toy.make("vae", lr=float("nan")), "lr must be a number"),
    (lambda: toy.make("gan", width=0), "width must be between 4 and 512; got 0"),
    (lambda: toy.make("gan", width=2.5), "width must be a whole number"),
    (lambda: toy.make("flow", depth=100), "depth must be between"),
    (lambda: toy.make("gan", loss="wasserstein"), "unknown loss 'wasserstein'; choose one of"),
    (lambda: toy.make("flow", latent=2), r"unknown setting\(s\) \['latent'\] for this family"),
    (lambda: toy.make("diffusion", timesteps=1), "timesteps must be between"),
    (lambda: next(toy.train(toy.make("vae"), toy.dataset("moons", 100), steps=0)), "steps must be between"),
    (lambda: next(toy.train(toy.make("vae"), toy.dataset("moons", 100), steps=10**9)), "steps must be between"),
    (lambda: toy.make("vae").sample(n=0), "n must be between"),
    (lambda: toy.make("diffusion").trajectories(sampler="euler"), "unknown sampler"),
])
def test_bad_settings_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_divergence_is_reported_not_hidden():
    data = toy.dataset("moons", n=200)
    model = toy.make("vae", lr=0.1, width=8)
    with torch.no_grad():
        model.encoder[0].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="diverged at step 1 .*lower the learning rate"):
        next(toy.train(model, data, steps=5))
