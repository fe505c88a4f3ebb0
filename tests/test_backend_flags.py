"""A backend declares its own flags (``cosmos_cli.backend.option`` on its ``Options`` fields) and the core adds them to
`generate` and `batch`: the core names none of Predict1's, a third-party backend's flag reaches its pipeline typed,
and what cannot be a flag (a clash, another type) is one warning, never a broken command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cosmos_cli.backend import PANEL_BACKEND, PANEL_SPEED, Backend, option
from cosmos_cli.errors import GenerationError
from cosmos_cli.registry import option_flags
from tests.conftest import REPO, FakeBackend, fake_spec, make_image


class _Stop(GenerationError):
    pass


@dataclasses.dataclass(frozen=True)
class TileOptions(Backend.Options):
    tiles: int = option(1, help="Tiles per frame (default 1).", metavar="N", panel=PANEL_SPEED)
    sharpness: float = option(0.5, help="How sharp (default 0.5).")
    mode: str = option("plain", help="plain or fancy (default plain).", metavar="MODE")

    def __post_init__(self):
        if self.mode not in ("plain", "fancy"):
            raise ValueError(f"expected plain or fancy, got {self.mode!r}")


class TileBackend(FakeBackend):
    id = "tiles"
    Options = TileOptions

    def __init__(self, name="Tile-Video2World", aliases=("tile",)):
        super().__init__((fake_spec(name, backend=self.id, aliases=aliases),))
        self.options = []

    def build_pipeline(self, spec, plan, *, options=None, **kw):
        self.options.append(options)
        raise _Stop("recorded")


@pytest.fixture
def register(register_backend):
    return register_backend


def help_of(cli, monkeypatch, command="generate") -> str:
    monkeypatch.setenv("COLUMNS", "80")
    res = cli(command, "--help")
    assert res.exit_code == 0, res.stderr
    return res.stdout


def test_the_core_declares_no_backend_flag():
    """Without the Predict1 plugin, `generate` and `batch` have no --numerics, --cp-scheme or --attention, and
    importing the app loads no plugin (the flags are read when the command is built)."""
    code = ("import sys, typer\nfrom cosmos_cli.app import app\n"
            "assert not [m for m in sys.modules if m.startswith('cosmos_plugins')]\n"
            "cmds = typer.main.get_command(app).commands\n"
            "for name in ('generate', 'batch'):\n"
            "    print(name, sorted(o for p in cmds[name].params for o in p.opts))\n")
    env = {**os.environ, "COSMOS_LOAD_PLUGINS": ""}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines():
        assert "--num-steps" in line and not {"'--numerics'", "'--cp-scheme'", "'--attention'"} & set(
            line.replace("[", " ").replace("]", " ").replace(",", " ").split()), line
    env.pop("COSMOS_LOAD_PLUGINS")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert res.returncode == 0 and res.stdout.count("'--numerics'") == 2 and res.stdout.count("'--attention'") == 2


def test_predict1s_flags_are_under_their_panels(cli, monkeypatch):
    text = help_of(cli, monkeypatch)
    panels = {title: body for title, body in _panels(text)}
    assert "--numerics" in panels["Sampling"] and "--cp-scheme" in panels["Memory and GPUs"]
    assert "--attention" in panels["Speed (opt-in)"]


def _panels(text: str):
    title, body = None, []
    for line in text.splitlines():
        if line.startswith("╭─ "):
            title, body = line.removeprefix("╭─ ").rstrip("─╮ ").strip(), []
        elif line.startswith("╰") and title:
            yield title, "\n".join(body)
            title = None
        elif title:
            body.append(line)


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_a_third_party_backends_flags_reach_its_pipeline_typed(cli, register, tmp_path, monkeypatch, command):
    backend = register(TileBackend())
    text = help_of(cli, monkeypatch, command)
    panels = dict(_panels(text))
    assert "--tiles" in panels["Speed (opt-in)"] and "Tiles per frame" in panels["Speed (opt-in)"]
    assert "--sharpness" in panels[PANEL_BACKEND] and "--mode" in panels[PANEL_BACKEND]
    image = make_image(tmp_path / "in.png", 40, 40)
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(json.dumps({"visual_input": str(image), "prompt": "a ball"}) + "\n", encoding="utf-8")
    head = ("generate", "-i", str(image), "--prompt", "a ball") if command == "generate" else ("batch", str(jsonl))
    common = (*head, "--model", "tile", "--no-upsampler", "--no-guardrail", "--device", "cpu",
              "--video-save-folder", str(tmp_path / "out"))
    for extra, want in (((), TileOptions()), (("--tiles", "3", "--sharpness", "0.25"), TileOptions(3, 0.25)),
                        (("--mode", "fancy"), TileOptions(mode="fancy"))):
        backend.options.clear()
        res = cli(*common, *extra)
        assert res.exit_code == 1 and "recorded" in res.stderr, res.stderr
        assert backend.options == [want] and type(backend.options[0].tiles) is int
    backend.options.clear()
    res = cli(*common, "--mode", "odd")  # the plugin's own check: one line naming the flag, before anything loads
    assert res.exit_code == 2 and "error: --mode: expected plain or fancy, got 'odd'" in res.stderr, res.stderr
    assert backend.options == [] and "Traceback" not in res.stderr
    res = cli(*common, "--tiles", "three")  # the type: click's own message for a bad int
    assert res.exit_code == 2 and "'--tiles'" in res.stderr and "Traceback" not in res.stderr


def test_another_backends_flag_is_refused_by_the_model_that_lacks_it(cli, register, tmp_path):
    """--tiles exists because the tiles backend declares it; the Predict1 demo model has no such option."""
    register(TileBackend())
    image = make_image(tmp_path / "in.png", 40, 40)
    res = cli("generate", "-i", str(image), "--prompt", "a ball", "--model", "predict1-tiny", "--no-upsampler",
              "--device", "cpu", "--video-save-folder", str(tmp_path / "out"), "--tiles", "2")
    assert res.exit_code == 2, res.stderr
    assert "error: --tiles: the predict1 backend has no --tiles option (its options are --numerics, --cp-scheme, " \
           "--attention)" in res.stderr
    assert not (tmp_path / "out").exists()


def test_two_backends_share_an_option_of_one_type(register):
    register(TileBackend())
    register(type("OtherTiles", (TileBackend,), {"id": "tiles2"})("Tile2-Video2World", ("tile2",)))
    (tiles,) = [f for f in option_flags() if f.name == "tiles"]  # (pluggy calls the last registered plugin first)
    assert sorted(tiles.backends) == ["tiles", "tiles2"] and tiles.type is int and tiles.flag.metavar == "N"


def _backend_with(name: str, fields: dict, annotations: dict, panel=PANEL_BACKEND):
    ns = {"__annotations__": annotations,
          **{k: option(v, help=f"{k} help", panel=panel) for k, v in fields.items()}}
    opts = dataclasses.dataclass(frozen=True)(type(f"{name}Options", (Backend.Options,), ns))
    return type(f"{name}Backend", (TileBackend,), {"id": name, "Options": opts})(f"{name}-Video2World", (name,))


@pytest.mark.parametrize("fields, annotations, warning", [
    ({"seed": 3}, {"seed": int}, "backend 'odd': option --seed is a cosmos option's name; it has no flag"),
    ({"compile": "x"}, {"compile": str}, "backend 'odd': option --compile is a cosmos option's name; it has no flag"),
    ({"compile_blocks": "x"}, {"compile_blocks": str},
     "backend 'odd': option --compile-blocks is a cosmos option's name; it has no flag"),
    ({"gpus": 2}, {"gpus": int}, "backend 'odd': option --gpus is a cosmos option's name; it has no flag"),
    ({"tiles": "4"}, {"tiles": str}, "backend 'tiles': option --tiles is of type int, backend 'odd' declares it str; "
                                     "'tiles''s has no flag"),  # the first registered is asked last (pluggy)
    ({"grid": None}, {"grid": dict}, "backend 'odd': option --grid is of type <class 'dict'>, not one of str, int, "
                                     "float, Path; it has no flag"),
])
@pytest.mark.parametrize("command", ["generate", "batch"])
def test_what_cannot_be_a_flag_is_one_warning(cli, register, monkeypatch, fields, annotations, warning, command):
    import cosmos_cli.registry

    monkeypatch.setattr(cosmos_cli.registry, "_warned", set())
    register(TileBackend())
    register(_backend_with("odd", fields, annotations))
    monkeypatch.setenv("COLUMNS", "80")
    res = cli(command, "--help")
    assert res.exit_code == 0 and res.stderr.count("warning:") == 1, res.stderr
    assert f"warning: {warning}" in res.stderr
    assert "--tiles" in res.stdout and "--sharpness" in res.stdout  # the other options keep their flags
    res = cli("generate", "--help")  # said once per process
    assert res.exit_code == 0 and "warning:" not in res.stderr


def test_an_unknown_panel_is_the_backend_panel(cli, register, monkeypatch):
    import cosmos_cli.registry

    monkeypatch.setattr(cosmos_cli.registry, "_warned", set())
    register(_backend_with("paneled", {"knob": 1}, {"knob": int}, panel="Knobs"))
    text = help_of(cli, monkeypatch)
    assert "--knob" in dict(_panels(text))[PANEL_BACKEND]


def test_a_malformed_backend_leaves_the_help_working(cli, register, monkeypatch):
    """A backend that fails validation: the commands' help still prints (without backend flags, said once); the
    error comes, as before, when a command uses the backends."""
    import cosmos_cli.registry

    monkeypatch.setattr(cosmos_cli.registry, "_warned", set())
    register(TileBackend())
    register(TileBackend("Tile-Again", ("tile-again",)))  # a second backend of the id "tiles"
    res = cli("generate", "--help")
    assert res.exit_code == 0 and "--numerics" not in res.stdout and "--num-steps" in res.stdout
    assert "warning: no backend options on the command line: two plugins registered a backend with the id " \
           "'tiles'" in res.stderr
    res = cli("backends")
    assert res.exit_code != 0 and "error: two plugins registered a backend with the id 'tiles'" in res.stderr


def test_a_path_option_is_read_as_a_path(register):
    @dataclasses.dataclass(frozen=True)
    class WithPath(Backend.Options):
        lut: Path = option(Path("lut.bin"), help="A lookup table.", metavar="FILE")

    register(type("PathBackend", (TileBackend,), {"id": "pathy", "Options": WithPath})("Pathy-Video2World", ("pathy",)))
    (lut,) = [f for f in option_flags() if f.name == "lut"]
    assert lut.type is Path and lut.backends == ("pathy",)
