"""The command line starts without the model zoo (`hdmap --help`, `hdmap models` in ~0.2 s): torch, Lightning,
anomalib, timm, open_clip, Ray and W&B load only where a step needs them. Each check runs in a fresh interpreter
(this test process has imported them all already)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps/examples/quickstart.yaml"
HEAVY = ("torch", "lightning", "anomalib", "timm", "open_clip", "ray", "wandb")


def _heavy_after(code: str) -> list[str]:
    """The heavy packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_the_command_line_imports_no_model_code():
    assert _heavy_after("import sweeps.cli") == []


def test_a_trial_config_validates_with_its_own_config_module_only():
    """patchcore on a backbone of `KNOWN_BACKBONES`: pydantic alone, no timm lookup, no Lightning module."""
    code = (
        "from hdmap.config import load_trial_config\n"
        "cfg = load_trial_config(None, ['model.backbone=resnet18', 'data.image_size=[32,96]'])\n"
        "assert cfg.model.name == 'patchcore'"
    )
    assert _heavy_after(code) == []


def test_the_model_catalog_needs_no_model_code():
    """`hdmap models`: every config's defaults, anomalib's adapted ones included (`CONSTRUCTORS`)."""
    assert _heavy_after("from hdmap.models.registry import model_catalog\nassert len(model_catalog()) >= 14") == []


def test_sweep_plan_checks_the_gated_banks_without_torch(tmp_path):
    """`sweep plan` on the quickstart with its data present decodes the ca_patchcore fit sets and runs the p90 bank
    rule (NumPy, the same function the trial calls) without loading torch (issue 22: plan < 3 s)."""
    code = (
        "import os, sys\n"
        f"os.chdir({str(tmp_path)!r})\n"
        "from hdmap.data.simulate import simulate\n"
        "simulate('data/quickstart-sim', n_train=60, n_test=40, domains=['A', 'C'], seed=0)\n"
        "import hdmap.models.configs.patchcore_family as family\n"
        "calls, rule = [], family.bank_problem\n"
        "family.bank_problem = lambda *a, **k: calls.append(a) or rule(*a, **k)\n"
        f"sys.argv = ['hdmap', 'sweep', 'plan', {str(QUICKSTART)!r}]\n"
        "from sweeps.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert len(calls) == 4, calls\n"
    )
    assert _heavy_after(code) == []
