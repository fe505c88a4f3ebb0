"""The bounds on what a user can hand us: generation values, batch files, input pictures.

The value bounds (``seed``, ``num_steps``, ``guidance``, ``fps``) are read from the batch schema
(``schemas/batch_job.schema.json``, the contract), so a batch line and the command-line flag of the same name
accept exactly the same values; :func:`check_generation_values` applies them to the flags before anything loads.
Why each bound:

* ``seed``: an integer in [0, 2^32 - 1], what ``numpy.random.RandomState`` (the conditioning noise) accepts.
* ``num_steps``: at most 1000 (the model's default is 35; more steps than the 1000 of training buy nothing).
* ``guidance``: a finite number in [0, 100] (default 7; NaN or infinity makes every latent NaN: a black video).
* ``fps``: an integer in [1, 240] (it conditions the network and sets the file's frame rate).

The file bounds keep a hostile batch file or picture from taking the machine's memory: a batch file must be a
regular file of at most :data:`MAX_BATCH_FILE_BYTES`, each line at most :data:`MAX_LINE_BYTES`; an input picture
(an image, or a video's frame) at most :data:`MAX_INPUT_PIXELS` pixels.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

from cosmos_cli.errors import UsageError

MAX_BATCH_FILE_BYTES = 64 * 2**20  # 64 MiB: about 300,000 lines of the examples' length
MAX_LINE_BYTES = 2**20  # 1 MiB per JSONL line: a prompt is cut at 512 tokens (a few KB) anyway
# 40 megapixels: 8K (7680x4320, 33.2 MP) and DCI 8K (8192x4320, 35.4 MP) fit. Decoded as RGB uint8 that is 120 MB;
# the model resizes every input to 1280x704 (0.9 MP) anyway.
MAX_INPUT_PIXELS = 40_000_000

# The flags of `cosmos generate` / `cosmos batch` that carry a batch line's value (the schema's field names).
FLAG_OF = {"seed": "--seed", "num_steps": "--num-steps", "guidance": "--guidance", "fps": "--fps"}


@lru_cache(maxsize=1)
def _schema_properties() -> dict[str, Any]:
    text = resources.files("cosmos_schemas").joinpath("batch_job.schema.json").read_text(encoding="utf-8")
    return json.loads(text)["properties"]


def bounds(field: str) -> tuple[float | None, float | None]:
    """``(minimum, maximum)`` of a numeric field of the batch schema (None where the schema sets none)."""
    prop = _schema_properties()[field]
    return prop.get("minimum"), prop.get("maximum")


def value_problem(field: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``field`` (one phrase, without the value), or None. Integers must be real integers (not
    ``1.0``, not ``True``); numbers must be finite."""
    kind = _schema_properties()[field].get("type")
    lo, hi = bounds(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    if kind == "integer" and not isinstance(value, int):
        return "must be an integer"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"must be between {_fmt(lo)} and {_fmt(hi)}"
    return None


def _fmt(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def check_generation_values(request: Any) -> None:
    """Refuse a command-line value outside the bounds (``request``: a ``GenerateRequest``; None = the model's
    default), with one line naming the flag, before any model loads."""
    for field, flag in FLAG_OF.items():
        value = getattr(request, field, None)
        if value is None:
            continue
        problem = value_problem(field, value)
        if problem:
            lo, hi = bounds(field)
            raise UsageError(f"{flag} {_fmt(value)}: {problem}",
                             hint=f"Use a value between {_fmt(lo)} and {_fmt(hi)}.")
