"""`cosmos download` given hostile listings by the Hub (issue 15.2): paths that escape, links, odd names; nothing
written outside the checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosmos_cli import download as dl
from cosmos_plugins.predict1 import specs as p1
from tests.download_fixtures import G1, M7, cosmos, error_lines, hub, march_2025_guardrails, models  # noqa: F401 - pytest fixtures

ESCAPE = "blocklist/a/b/../../../../../../x"  # from <ck>/nvidia/Cosmos-Guardrail1/: lands beside <ck>


def nothing_written(root: Path) -> bool:
    return not root.exists() or not any(p.is_file() for p in root.rglob("*"))


@pytest.mark.parametrize(
    "name, why",
    [
        (ESCAPE, "contains '..'"),
        ("blocklist/../../x", "contains '..'"),
        ("/tmp/evil.json", "is absolute"),  # matches LlamaGuard's "*.json" (fnmatch's * crosses /)
        ("blocklist/a\0b", "contains a NUL byte"),
        ("blocklist/..\\..\\..\\x", "contains a backslash"),
        ("blocklist//x", "has an empty or '.' path segment"),
        ("blocklist/./x", "has an empty or '.' path segment"),
        ("blocklist/a\nb", "contains a control character"),
    ],
)
def test_a_listed_name_that_could_escape_is_refused_before_anything_is_written(
    cosmos, hub, tmp_path, name, why
):
    repo = "meta-llama/LlamaGuard-7b" if name.endswith(".json") else G1
    hub.repos[repo].files[name] = b"pwned"
    ck = tmp_path / "deep" / "er" / "ck"
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1, r.stdout
    lines = error_lines(r.stderr)
    assert lines[0] == f"error: refusing the file {name!r} listed by {repo}: its name {why}"
    assert lines[1].startswith("hint: Nothing was written.") and "Traceback" not in r.stderr
    assert nothing_written(tmp_path) and not Path("/tmp/evil.json").exists()
    assert hub.data_requests() == []
    # the dry run refuses the same way: it plans from the same listing
    r = cosmos("download", "fh7b", "--dry-run", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1 and error_lines(r.stderr)[0].startswith("error: refusing the file")


def test_the_escaping_name_of_march_2025s_guardrail_folder_is_refused(hub, tmp_path):
    hub.repos[f"nvidia/{M7}"].files["guardrail/a/b/../../../../../x"] = b"pwned"
    ck = tmp_path / "a" / "b" / "ck"
    with pytest.raises(dl.UnsafeListingError, match=r"guardrail/a/b/\.\./\.\./\.\./\.\./\.\./x"):
        dl.plan_download(march_2025_guardrails(M7), ck)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("sha", ["../../../x", "a" * 39, "g" * 40, "", "0" * 40 + "/.."])
def test_a_commit_id_that_is_not_40_hex_digits_is_refused(cosmos, hub, tmp_path, sha):
    hub.repos["nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"].listed_sha = sha
    ck = tmp_path / "x" / "y" / "ck"
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1
    assert error_lines(r.stderr)[0] == (
        f"error: nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0 answered the commit id {sha!r} for revision "
        "'main': a commit id must be 40 hex digits"
    )
    assert nothing_written(tmp_path) and hub.data_requests() == []


def test_a_pinned_revision_answered_with_another_commit_is_refused(hub, models, tmp_path):
    hub.repos["meta-llama/LlamaGuard-7b"].listed_sha = "f" * 40
    with pytest.raises(
        dl.UnsafeListingError, match=f"asked for commit {p1.LLAMAGUARD_REVISION}, the Hub answered f{{40}}"
    ):
        dl.plan_download(dl.select_files([models.specs[0]]), tmp_path / "ck")


@pytest.mark.parametrize(
    "lie, kind",
    [
        ({"lfs": {"sha256": "../../../x"}}, "SHA-256"),
        ({"blobId": "../x"}, "blob id"),
        ({"lfs": {"sha256": "a" * 63}}, "SHA-256"),
    ],
)
def test_a_digest_that_would_name_a_path_is_refused(hub, models, tmp_path, lie, kind):
    path = "video_content_safety_filter/safety_filter.pt" if "lfs" in lie else "blocklist/custom/words"
    hub.repos[G1].lies[path] = lie
    with pytest.raises(dl.UnsafeListingError, match=f"lists {path} with the {kind}"):
        dl.plan_download(dl.select_files([models.specs[0]]), tmp_path / "ck")


def test_a_symbolic_link_out_of_the_checkpoint_folder_is_not_followed(hub, models, tmp_path):
    ck, outside = tmp_path / "ck", tmp_path / "outside"
    (ck / "nvidia").mkdir(parents=True)
    outside.mkdir()
    (ck / "nvidia" / "Cosmos-Guardrail1").symlink_to(outside)
    files = [f for f in dl.select_files([models.specs[0]]) if f.repo == G1]
    with pytest.raises(dl.UnsafeListingError, match="resolves to .*outside"):
        dl.plan_download(files, ck)
    assert list(outside.iterdir()) == []
    # and at write time, for a link made after the plan
    (ck / "nvidia" / "Cosmos-Guardrail1").unlink()
    plan = dl.plan_download(files, ck)
    (ck / "nvidia" / "Cosmos-Guardrail1").symlink_to(outside)
    with pytest.raises(dl.UnsafeListingError, match="outside"):
        dl.download(plan, progress=False)
    assert list(outside.iterdir()) == []


def test_check_listing_name_accepts_plain_names():
    for name in ("model.pt", "a/b/c.json", "guardrail/blocklist/custom/words", "x..y/z", "..x", "a b/c"):
        assert dl.check_listing_name("r", name) == name
    assert dl.check_commit("r", "A" * 40, "main") == "A" * 40
