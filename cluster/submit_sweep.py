"""Run a sweep on the Ray cluster this script runs in (the head node).

    ray submit ray_config.yaml cluster/submit_sweep.py -- SPEC [--set PATH=VALUE ...] [--retry-failed]

`ray submit` copies this file to ~/submit_sweep.py on the head and runs it there. It runs
`hdmap sweep run SPEC --address auto ARGS...` from the repo checkout (~/hdmap-sweeps, or $HDMAP_REPO),
so spec paths are relative to the repo as on your laptop, and exits with the CLI's exit code.
If $HDMAP_SWEEP_OUTPUT is set (ray_config.yaml sets it on the head) and ARGS carry no `output=`
override, `--set output=$HDMAP_SWEEP_OUTPUT` is added: results go to shared storage, not the head's disk.
`--dry-run` prints the command instead of running it. The printed command shows no credential of an output URI
(sweeps.redact, from the checkout).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def repo_dir() -> Path:
    here = Path(__file__).resolve().parent
    if os.environ.get("HDMAP_REPO"):
        return Path(os.environ["HDMAP_REPO"]).expanduser()
    if here.name == "cluster" and (here.parent / "pyproject.toml").exists():  # run from a checkout
        return here.parent
    return Path("~/hdmap-sweeps").expanduser()  # the file_mounts target in ray_config.yaml


def build_command(args: list[str]) -> list[str]:
    spec, rest = args[0], args[1:]
    hdmap = [shutil.which("hdmap")] if shutil.which("hdmap") else [sys.executable, "-m", "sweeps.cli"]
    cmd = [*hdmap, "sweep", "run", spec]
    if not any(a == "--address" or a.startswith("--address=") for a in rest):
        cmd += ["--address", "auto"]
    output = os.environ.get("HDMAP_SWEEP_OUTPUT")
    if output and not any(a.removeprefix("--set=").startswith("output=") for a in rest):
        cmd += ["--set", f"output={output}"]
    return cmd + rest


def shown(cmd: list[str], repo: Path) -> str:
    """The command as printed: credentials in a URI (`output=s3://KEY:SECRET@...`) masked by the checkout's
    sweeps.redact; without a checkout to import it from, every URI is hidden whole."""
    sys.path.insert(0, str(repo))
    try:
        from sweeps.redact import redact_uri
    except ImportError:

        def redact_uri(uri: str) -> str:
            return "<URI hidden>"

    def one(arg: str) -> str:
        if "://" not in arg:
            return arg
        head, sep, uri = arg.partition("=") if "=" in arg.split("://", 1)[0] else ("", "", arg)
        return head + sep + redact_uri(uri)

    return shlex.join(one(arg) for arg in cmd)


def main(argv: list[str]) -> int:
    dry_run = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    cmd, repo = build_command(args), repo_dir()
    print(f"[submit_sweep] cd {repo} && {shown(cmd, repo)}", flush=True)
    if dry_run:
        return 0
    if not repo.is_dir():
        print(f"[submit_sweep] no repo checkout at {repo} (set HDMAP_REPO)", file=sys.stderr)
        return 2
    return subprocess.call(cmd, cwd=repo)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
