"""Host memory detection on fake /proc and /sys/fs/cgroup trees, and `cosmos memory-plan --ram`."""

from __future__ import annotations

from pathlib import Path

import pytest

import cosmos_cli.hostmem as hostmem
from cosmos_cli.hostmem import HostMemory, detect_host_memory

GB = 10**9


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


MEMINFO = "MemTotal:       125000000 kB\nMemFree:         1000000 kB\nMemAvailable:   100000000 kB\n"


def test_meminfo_alone(tmp_path):
    mem = detect_host_memory(_tree(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/\n"}))
    assert mem == HostMemory(125_000_000 * 1024, 100_000_000 * 1024, None, "MemAvailable (/proc/meminfo)")


def test_no_meminfo_is_unknown(tmp_path):
    assert detect_host_memory(tmp_path) is None


def test_cgroup_v2_limit_less_unreclaimable_usage(tmp_path):
    # 32 GB limit; 10 GB used, of which 8 GB page cache, 1 GB of it shmem (not reclaimable): 32 - (10 - 7) = 29 GB
    root = _tree(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/\n",
                            "sys/fs/cgroup/memory.max": f"{32 * GB}\n", "sys/fs/cgroup/memory.current": f"{10 * GB}\n",
                            "sys/fs/cgroup/memory.stat": f"anon {2 * GB}\nfile {8 * GB}\nshmem {GB}\n"})
    mem = detect_host_memory(root)
    assert mem.available_bytes == 29 * GB and mem.limit_bytes == 32 * GB
    assert mem.source == "cgroup v2 memory.max sys/fs/cgroup"


def test_cgroup_v2_max_is_no_limit_and_a_parent_limit_binds(tmp_path):
    root = _tree(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "0::/user.slice/job7\n",
                            "sys/fs/cgroup/memory.max": "max\n",
                            "sys/fs/cgroup/user.slice/job7/memory.max": "max\n",
                            "sys/fs/cgroup/user.slice/memory.max": f"{16 * GB}\n",
                            "sys/fs/cgroup/user.slice/memory.current": f"{GB}\n"})
    mem = detect_host_memory(root)
    assert mem.available_bytes == 15 * GB and mem.limit_bytes == 16 * GB and "user.slice" in mem.source


def test_cgroup_v1_limit(tmp_path):
    root = _tree(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "5:cpu:/\n4:memory:/docker/abc\n",
                            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # no limit
                            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{24 * GB}\n",
                            "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": f"{6 * GB}\n",
                            "sys/fs/cgroup/memory/docker/abc/memory.stat": f"cache {5 * GB}\nrss {GB}\n"
                                                                           f"total_cache {5 * GB}\ntotal_shmem 0\n"})
    mem = detect_host_memory(root)
    assert mem.available_bytes == 23 * GB and mem.limit_bytes == 24 * GB and mem.source.startswith("cgroup v1")


def test_cgroup_v1_hierarchical_limit(tmp_path):
    """v1 shows an ancestor's limit as memory.stat hierarchical_memory_limit (the leaf's own file says none)."""
    root = _tree(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "4:memory:/\n",
                            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
                            "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{2 * GB}\n",
                            "sys/fs/cgroup/memory/memory.stat": f"total_cache {GB}\nhierarchical_memory_limit "
                                                                f"{40 * GB}\n"})
    assert detect_host_memory(root).available_bytes == 39 * GB


def test_machine_tighter_than_the_cgroup(tmp_path):
    root = _tree(tmp_path, {"proc/meminfo": "MemTotal: 8000000 kB\nMemAvailable: 2000000 kB\n",
                            "proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": f"{32 * GB}\n",
                            "sys/fs/cgroup/memory.current": "0\n"})
    mem = detect_host_memory(root)
    assert mem.available_bytes == 2_000_000 * 1024 and mem.limit_bytes == 32 * GB and "MemAvailable" in mem.source


def test_memory_plan_ram_flag(cli):
    res = cli("memory-plan", "--model", "14B", "--vram", "24GB", "--ram", "32GB", "--no-upsampler", "--no-guardrail")
    assert res.exit_code == 0, res.stderr
    assert "host memory: 29.8 GiB (--ram 32GB)" in res.stdout and "stream-mapped" in res.stdout
    data = cli("memory-plan", "--model", "14B", "--vram", "24GB", "--ram", "32GB", "--no-upsampler", "--no-guardrail",
               "--json").json()
    assert data["ram_bytes"] == 32 * GB and data["strategy"] == "stream-mapped" and data["host_fits"] is True
    rows = {s["name"]: s for s in data["strategies"]}
    assert rows["stream"]["fits"] is True and rows["stream"]["host_fits"] is False  # fits the GPU, not the host
    assert rows["stream-mapped"]["host_mapped_bytes"] == data["host_mapped_bytes"] > 0


def test_memory_plan_refuses_what_the_host_cannot_hold(cli):
    res = cli("memory-plan", "--model", "14B", "--vram", "24GB", "--ram", "32GB")
    assert res.exit_code == 1
    assert "nothing fits in 29.8 GiB of host memory" in res.stderr and "--no-upsampler" in res.stderr


def test_memory_plan_reads_the_host(cli, monkeypatch):
    monkeypatch.setattr(hostmem, "available_host_bytes", lambda: 48 * GB)
    monkeypatch.setattr(hostmem, "detect_host_memory", lambda: HostMemory(64 * GB, 48 * GB, 50 * GB, "cgroup v2 x"))
    res = cli("memory-plan", "--model", "7B", "--vram", "12GB", "--no-upsampler", "--no-guardrail")
    assert res.exit_code == 0, res.stderr
    assert "host memory: 44.7 GiB available (cgroup v2 x)" in res.stdout and "stream-lean" in res.stdout


@pytest.mark.parametrize("text", ["32", "lots"])
def test_ram_flag_needs_a_size(cli, text):
    res = cli("memory-plan", "--model", "7B", "--ram", text)
    assert res.exit_code == 2 and "--ram" in res.stderr


def test_generate_plans_with_the_host_memory_it_reads(monkeypatch):
    """`generate`'s plan (plan_for) reads the host like memory-plan does, and refuses with the same what-to-do."""
    import torch

    from cosmos_cli.errors import MemoryPlanError
    from cosmos_cli.generation import GenerateRequest, plan_for
    from cosmos_cli.registry import find_model

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (24 * GB, 25 * GB))
    monkeypatch.setattr(hostmem, "available_host_bytes", lambda: 32 * GB)
    spec = find_model("14B")[1]
    lean = GenerateRequest(Path("in.png"), "a ball", model="14B", disable_prompt_upsampler=True,
                           disable_guardrail=True, device="cuda")
    assert plan_for(spec, lean, "cuda").strategy == "stream-mapped"
    with pytest.raises(MemoryPlanError) as err:
        plan_for(spec, GenerateRequest(Path("in.png"), "a ball", model="14B", device="cuda"), "cuda")
    assert "host memory" in err.value.message and "--no-upsampler" in err.value.hint
