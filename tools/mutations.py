"""Mutation check: break the conditioning and the guidance on purpose, one way at a time, and list the tests that fail.

    python -m tools.mutations --tests tests/test_demo_product.py tests/test_sampler.py
    python -m tools.mutations --tests tests/test_sampler.py --only sigma-data cond-swap
    python -m tools.mutations --run "python -m tools.demo.product --steps 8" --only no-input-substitution

Each mutation is applied to a temporary copy of the repository (the working tree's files that git tracks or
does not ignore; never the working tree itself), and the tests run there as the default run runs them (the
``addopts`` of ``pyproject.toml``: no ``slow``, no ``gpu``), with the copy's packages first on the import path
(``cosmos_cli``, ``cosmos_plugins``, ... as ``[tool.setuptools] package-dir`` maps them), so an editable install
of the working tree cannot shadow them; the tool checks that before it trusts a run. The tests run once unmutated
first: a test failing there is reported and not counted as catching anything.

Each mutation finds its code by an exact source snippet that must occur exactly once: when the code moved, the
tool stops with the file and the snippet instead of testing unmutated code. Output: a table of mutation and the
tests that fail under it; exit code 1 when a mutation is caught by no test (or the unmutated run fails).
``--run CMD`` runs a command in each mutated copy instead of the tests and prints its output (for figures).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    path: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (exact snippet, replacement), each snippet found exactly once


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "sigma-data", "`* SIGMA_DATA` dropped in Predict1Pipeline.encode_video", "plugins/predict1/pipeline.py",
        (("latent = tok.encode(pixels.to(self.device, dtype), chunk_frames=self.tokenizer_chunk) * SIGMA_DATA",
          "latent = tok.encode(pixels.to(self.device, dtype), chunk_frames=self.tokenizer_chunk)"),),
    ),
    Mutation(
        "no-input-substitution", "fp32 sampler: the condition frames' input substitution removed (x_in = x)",
        "plugins/predict1/sampler.py",
        (("x_in = ind.float() * (augmented / c_in(sf)) + (1 - ind.float()) * x", "x_in = x"),),
    ),
    Mutation(
        "no-prediction-substitution", "fp32 sampler: the prediction substitution removed (condition frames not "
        "pinned)", "plugins/predict1/sampler.py",
        (("f = ind.float() * f_latent + (1 - ind.float()) * f", "f = f"),),
    ),
    Mutation(
        "cond-swap", "cond and uncond swapped in the pipeline's model function (batched and one-by-one)",
        "plugins/predict1/pipeline.py",
        (("return out[:1], out[1:]", "return out[1:], out[:1]"),
         ('return run(x_scaled, t, slice(0, 1), "cond"), run(x_scaled, t, slice(1, 2), "uncond")',
          'return run(x_scaled, t, slice(1, 2), "uncond"), run(x_scaled, t, slice(0, 1), "cond")')),
    ),
    Mutation(
        "guidance-swap", "guidance branches swapped in the formula: F_u + w (F_u - F_c)", "plugins/predict1/sampler.py",
        (("return f_cond + guidance * (f_cond - f_uncond)", "return f_uncond + guidance * (f_uncond - f_cond)"),),
    ),
    Mutation(
        "original-no-input-substitution", "original-numerics sampler: the input substitution removed",
        "plugins/predict1/sampler.py",
        (("x_in = (ind * (augmented / c_in_b.to(device)) + (1 - ind) * x).to(bf16)", "x_in = x.to(bf16)"),),
    ),
    Mutation(
        "original-no-prediction-substitution", "original-numerics sampler: the prediction substitution removed",
        "plugins/predict1/sampler.py",
        (("f = ind * f_latent + (1 - ind) * f", "f = f"),),
    ),
)


class MutationError(RuntimeError):
    pass


def mutated_text(m: Mutation, text: str) -> str:
    """``text`` with the mutation's edits; MutationError when a snippet is missing or not unique."""
    for old, new in m.edits:
        count = text.count(old)
        if count != 1:
            raise MutationError(f"mutation {m.name}: {'not found' if count == 0 else f'found {count} times'} in "
                                f"{m.path}: {old!r}. The code moved: update the snippet in tools/mutations.py.")
        text = text.replace(old, new)
    return text


def working_tree_files(repo: Path) -> list[str]:
    """The files git tracks or does not ignore (the working tree's content, uncommitted edits included)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (repo / f).is_file()]


def copy_repository(repo: Path, dest: Path) -> Path:
    for rel in working_tree_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)
    return dest


def package_shims(copy: Path, shim: Path) -> Path:
    """A folder of links, one per package of ``[tool.setuptools] package-dir``, to the copy's folders."""
    text = (copy / "pyproject.toml").read_text()
    try:
        import tomllib  # Python 3.11+

        mapping = tomllib.loads(text).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    except ImportError:  # Python 3.10: the one inline table we need
        found = re.search(r"^package-dir\s*=\s*\{([^}]*)\}", text, re.M)
        mapping = dict(re.findall(r'"([^"]+)"\s*=\s*"([^"]+)"', found.group(1))) if found else {}
    if not mapping:
        raise MutationError("pyproject.toml has no [tool.setuptools] package-dir: cannot map the copy's packages")
    shim.mkdir(parents=True, exist_ok=True)
    for package, folder in mapping.items():
        if package and "." not in package:
            (shim / package).symlink_to(copy / folder, target_is_directory=True)
    return shim


def environment(copy: Path, shim: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(copy)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never meet its mutant's cached bytecode
    return env


def check_imports(copy: Path, env: dict[str, str]) -> None:
    """The copy's modules are the ones imported there (not the working tree's, through an editable install)."""
    code = ("import cosmos_cli, cosmos_plugins.predict1.pipeline as p, cosmos_plugins.predict1.sampler as s; "
            "print(cosmos_cli.__file__); print(p.__file__); print(s.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True)
    files = [Path(line).resolve() for line in out.stdout.split()]
    if out.returncode != 0 or len(files) != 3 or not all(f.is_relative_to(copy.resolve()) for f in files):
        raise MutationError(f"the copy's packages are not the ones imported in it: {out.stdout.strip()} "
                            f"{out.stderr.strip()}")


def run_tests(copy: Path, env: dict[str, str], tests: list[str], junit: Path, timeout: float) -> dict[str, str]:
    """Run pytest in the copy: {test id: outcome} (passed, failed, error, skipped)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no",
           f"--junitxml={junit}", *tests]
    try:
        subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"<timeout>": "failed"}
    if not junit.exists():
        return {"<no report>": "failed"}
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        tags = {child.tag for child in case}
        outcomes[name] = ("failed" if "failure" in tags else "error" if "error" in tags
                          else "skipped" if "skipped" in tags else "passed")
    junit.unlink()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", nargs="+", default=["tests/test_sampler.py", "tests/test_demo_product.py",
                                                   "tests/test_demo_model.py"], help="pytest arguments (paths, ids)")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="these mutations only")
    ap.add_argument("--run", default=None, metavar="CMD", help="run CMD (a shell command) in each mutated copy "
                                                               "instead of the tests, and show its output")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per test run (default 1800)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = ap.parse_args(argv)

    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:38s} {m.description}")
        return 0
    chosen = [m for m in MUTATIONS if args.only is None or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"error: unknown mutation(s) {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
        return 2
    for m in chosen:  # every snippet is checked before anything runs
        mutated_text(m, (REPO / m.path).read_text())

    with tempfile.TemporaryDirectory(prefix="cosmos-mutations-") as tmp:
        copy = copy_repository(REPO, Path(tmp) / "repo")
        env = environment(copy, package_shims(copy, Path(tmp) / "shim"))
        check_imports(copy, env)
        junit = Path(tmp) / "junit.xml"

        if args.run:
            for m in chosen:
                path = copy / m.path
                original = path.read_text()
                path.write_text(mutated_text(m, original))
                print(f"== {m.name}: {m.description}", flush=True)
                subprocess.run(args.run, shell=True, cwd=copy, env=env)
                path.write_text(original)
            return 0

        t0 = time.perf_counter()
        base = run_tests(copy, env, args.tests, junit, args.timeout)
        broken = sorted(t for t, o in base.items() if o in ("failed", "error"))
        print(f"unmutated: {sum(o == 'passed' for o in base.values())} passed, {len(broken)} failed "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for t in broken:
            print(f"  fails unmutated: {t}")
        rows = []
        for m in chosen:
            path = copy / m.path
            original = path.read_text()
            path.write_text(mutated_text(m, original))
            t0 = time.perf_counter()
            outcomes = run_tests(copy, env, args.tests, junit, args.timeout)
            path.write_text(original)
            caught = sorted(t for t, o in outcomes.items() if o in ("failed", "error") and t not in broken)
            rows.append((m, caught, time.perf_counter() - t0))
            print(f"{m.name}: {len(caught)} failing ({rows[-1][2]:.0f} s)", flush=True)

    print()
    print(f"| mutation | failing tests ({' '.join(args.tests)}) |")
    print("|---|---|")
    for m, caught, _ in rows:
        print(f"| {m.name}: {m.description} | {len(caught)}: {', '.join(caught) if caught else '**none**'} |")
    missed = [m.name for m, caught, _ in rows if not caught]
    if missed:
        print(f"\nnot caught: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
