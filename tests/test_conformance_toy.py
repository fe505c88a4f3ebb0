"""A toy second backend (tests/toy_backend/, its own tiny network) installed through the ``cosmos`` entry-point
group, running the conformance battery with no edit to cosmos_cli/; and the facts it owns through its spec (its
strategies, its stages, component names of its own, no licence text of NVIDIA's)."""

from __future__ import annotations

import importlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cosmos_cli.planner import plan_memory
from cosmos_plugins.predict1.strategies import STRATEGIES
from tests.conformance import BackendConformance

TOY_DIR = Path(__file__).resolve().parent / "toy_backend"

def install(target: Path) -> None:
    """Install tests/toy_backend into ``target`` as pip would lay it out: the module and a ``.dist-info`` folder whose
    ``entry_points.txt`` holds the pyproject's ``[project.entry-points.cosmos]`` table (written here rather than by
    ``pip install``: this environment's setuptools 65 without the ``wheel`` package cannot build a wheel offline, and
    the file importlib.metadata reads is the same either way)."""
    import shutil

    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest itself depends on tomli there
        import tomli as tomllib

    project = tomllib.loads((TOY_DIR / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for module in ("cosmos_toy_backend.py",):
        shutil.copy(TOY_DIR / module, target / module)
    info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n",
                                   encoding="utf-8")
    eps = project["entry-points"]["cosmos"]
    (info / "entry_points.txt").write_text("[cosmos]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()),
                                           encoding="utf-8")


@pytest.fixture(scope="module")
def toy_installed(tmp_path_factory):
    """The toy backend installed into a folder on sys.path and the registry's entry points loaded afresh: it loads
    exactly as a third-party package does (``registry.plugin_manager``, the ``cosmos`` group)."""
    from cosmos_cli import registry

    target = tmp_path_factory.mktemp("toy-site")
    install(target)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    registry.plugin_manager.cache_clear()
    try:
        assert "toy" in registry.load_report().loaded, registry.load_report()
        yield sys.modules["cosmos_toy_backend"]
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("cosmos_toy_backend", None)
        registry.plugin_manager.cache_clear()


class TestConformanceToy(BackendConformance):
    model = "Toy-Video2World"

    def exact(self, plan) -> bool:
        return True  # its placements only move the weights; the same kernels run under every strategy

    @pytest.fixture(scope="class")
    def found(self, toy_installed):
        from cosmos_cli.registry import find_model

        return find_model(self.model)

    def write_checkpoint(self, root: Path) -> None:
        sys.modules["cosmos_toy_backend"].write_checkpoint(root, seed=0)


def test_the_toy_imports_only_the_core_and_torch(toy_installed):
    """A second family stands on the core's public types alone: no import of the Predict1 plugin."""
    import ast

    tree = ast.parse(Path(toy_installed.__file__).read_text(encoding="utf-8"))
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert roots == {"__future__", "dataclasses", "pathlib", "cosmos_cli", "torch"}, roots


GiB = 1 << 30


def test_a_stage_of_its_own_is_planned(toy_installed):
    """The stages are the spec's (``ModelSpec.stages``, then any other a component names): a stage of another name
    gets its peak, the weights resident in it plus its activations, in the order the spec runs them."""
    net = toy_installed.SPEC.components[0]
    spec = replace(toy_installed.SPEC, components=(replace(net, stages=("render",),
                                                           activation_bytes=(("render", 1000),)),))
    plan = plan_memory(spec, 80 * GiB, strategy="resident", upsampler=False, guardrail=False)
    assert plan.stage_peaks == (("render", net.weight_bytes + 1000),)
    assert plan.predicted_peak_bytes == net.weight_bytes + 1000
    prep = replace(net, name="video_prep", stages=("prepare",), num_params=10, activation_bytes=(("prepare", 7),))
    two = replace(spec, stages=("prepare", "render"), components=(*spec.components, prep))
    plan = plan_memory(two, 80 * GiB, strategy="offload-all", upsampler=False, guardrail=False)
    # offload-all: each on the GPU only in its own stage
    assert plan.stage_peaks == (("prepare", prep.weight_bytes + 7), ("render", net.weight_bytes + 1000))


def test_a_component_name_of_its_own_is_offloaded(toy_installed):
    """A strategy that moves every core component (offload-all, the stream ones) moves a component of a name of
    the backend's own too (``Strategy.others``); the ones that offload only named models leave it resident."""
    net = toy_installed.SPEC.components[0]
    spec = replace(toy_installed.SPEC, components=(replace(net, name="video_model"),))
    plan = plan_memory(spec, 80 * GiB, strategy="offload-all", upsampler=False, guardrail=False)
    assert plan.placement("video_model") == "swap"
    plan = plan_memory(replace(spec, strategies=STRATEGIES), 80 * GiB, strategy="offload-tokenizer", upsampler=False,
                       guardrail=False)
    assert plan.placement("video_model") == "gpu"


def test_no_nvidia_licence_text_for_another_family(toy_installed, tmp_path):
    """--disable-guardrail prints the warning the spec carries (Predict1's: NVIDIA's licence), none for the toy."""
    from tests.conftest import make_image, run_cli

    toy_installed.write_checkpoint(tmp_path / "ckpt")
    image = make_image(tmp_path / "in.png", 16, 16)
    res = run_cli("generate", "--model", "toy", "--checkpoint-dir", str(tmp_path / "ckpt"), "-i", str(image),
                  "--prompt", "a ball", "--device", "cpu", "--disable-guardrail", "--video-save-folder",
                  str(tmp_path / "out"))
    assert res.exit_code == 0, res.stderr
    # the licence text is the spec's (ModelSpec.guardrail_disabled_warning): the toy's has none, so no warning at all
    assert "NVIDIA" not in res.stderr and "warning:" not in res.stderr, res.stderr


def test_auto_picks_only_a_declared_strategy(toy_installed):
    """The planner (a pure function) offers only the spec's strategies: with every byte to spare, a spec declaring
    offload-all alone still gets offload-all, and the retry's leaner step stays inside the declared ones."""
    from cosmos_cli.planner import leaner_strategy

    only = replace(toy_installed.SPEC, strategies=toy_installed.SPEC.strategies[1:])
    plan = plan_memory(only, 80 * GiB, upsampler=False, guardrail=False)
    assert plan.strategy == "offload-all" and [a[0] for a in plan.alternatives] == ["offload-all"]
    assert leaner_strategy("resident", toy_installed.SPEC) == "offload-all"
    assert leaner_strategy("offload-all", toy_installed.SPEC) is None
    assert leaner_strategy("stream", toy_installed.SPEC) is None  # not the toy's: no leaner step of its own


def test_an_offload_it_lacks_is_one_line_naming_what_it_has(toy_installed, tmp_path):
    from tests.conftest import make_image, run_cli

    toy_installed.write_checkpoint(tmp_path / "ckpt")
    image = make_image(tmp_path / "in.png", 16, 16)
    for flags in (("--offload", "stream"), ("--offload_prompt_upsampler",)):  # the original's flag means offload-upsampler
        res = run_cli("generate", "--model", "toy", "--checkpoint-dir", str(tmp_path / "ckpt"), "-i", str(image),
                      "--prompt", "a ball", "--device", "cpu", "--video-save-folder", str(tmp_path / "out"), *flags)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.exit_code == 1 and "Traceback" not in res.stderr, (flags, res.stderr)
        assert len(errors) == 1 and "implements resident, offload-all" in errors[0], (flags, res.stderr)
        assert not (tmp_path / "out" / "output.mp4").exists()


def test_a_spec_naming_an_unknown_strategy_is_refused_when_loaded(toy_installed, monkeypatch):
    """A malformed ``ModelSpec.strategies`` (a bare name, none, one name twice, an unknown placement), or a component
    left out by a switch there is not, is a malformed plugin, said in one line when the backends load."""
    from cosmos_cli import registry
    from cosmos_cli.errors import PluginError

    spec = toy_installed.SPEC
    resident, offload_all = spec.strategies
    for bad, said in (((resident, "offload-everything"), "lists 'offload-everything' as a memory strategy, which is"),
                      ((), "declares no memory strategy"),
                      ((resident, resident), r"of one name twice: \['resident'\]"),
                      ((replace(offload_all, placements=(("diffusion_transformer", "disk"),)),),
                       r"strategy 'offload-all' uses unknown placements \['disk'\]")):
        monkeypatch.setattr(toy_installed.ToyBackend, "models", lambda self, b=bad: (replace(spec, strategies=b),))
        with pytest.raises(PluginError, match=said):
            registry.backends()
    optional = replace(spec, components=(replace(spec.components[0], left_out_by="watermark"),))
    monkeypatch.setattr(toy_installed.ToyBackend, "models", lambda self: (optional,))
    with pytest.raises(PluginError, match=r"left out by unknown switches \['watermark'\]"):
        registry.backends()


def test_its_own_normalisation_and_no_negative_prompt(toy_installed, tmp_path):
    """The model facts are the spec's: the toy reads its frames in [-1, 1] (white 1.0, where Predict1's
    ``x / 128 - 1`` gives 0.9921875) and, declaring no negative prompt, gets none."""
    import torch

    from cosmos_cli.generation import GenerateRequest, make_job
    from cosmos_cli.media import frames_to_tensor, read_frames
    from tests.conftest import make_image

    spec = toy_installed.SPEC
    image = make_image(tmp_path / "in.png", 16, 16, value=255)  # black top half, white bottom half
    assert make_job(GenerateRequest(image, "a ball", model="toy"), spec, "out").negative_prompt == ""
    pixels = frames_to_tensor(read_frames(image, 1), spec.height, spec.width, normalisation=spec.input_normalisation)
    assert torch.all(pixels[..., :8, :] == -1.0)
    assert torch.allclose(pixels[..., 8:, :], torch.ones(()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("flags", [("--numerics", "original"), ("--cp_scheme", "cfg")])  # (the original's spelling)
@pytest.mark.parametrize("command", ["generate", "batch"])
def test_an_option_it_lacks_is_one_line_before_loading(toy_installed, tmp_path, monkeypatch, command, flags):
    """Predict1's options are the Predict1 backend's own: the toy has none (the base ``Backend.Options``), so a
    given one is refused in one line naming the flag before any model loads; left out, the toy runs (above)."""
    import cosmos_cli.generation as gen
    from tests.conftest import make_image, run_cli

    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    image = make_image(tmp_path / "in.png", 16, 16)
    common = ("--model", "toy", "--checkpoint-dir", str(tmp_path / "ckpt"), "--device", "cpu",
              "--video-save-folder", str(tmp_path / "out"), *flags)
    if command == "generate":
        res = run_cli("generate", "-i", str(image), "--prompt", "a ball", *common)
    else:
        jsonl = tmp_path / "jobs.jsonl"
        jsonl.write_text(f'{{"visual_input": "{image}", "prompt": "a ball"}}\n', encoding="utf-8")
        res = run_cli("batch", str(jsonl), *common)
    flag = flags[0].replace("_", "-")
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.stderr
    assert errors == [f"error: {flag}: the toy backend has no {flag} option (it has no options of its own)"], res.stderr
    assert f"hint: Drop {flag}." in res.stderr
    assert not (tmp_path / "out").exists()
