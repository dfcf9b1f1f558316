"""Results on object storage: a sweep whose `output` is s3:// (a moto S3 server on loopback) lands every row there."""

import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow
moto_server = pytest.importorskip("moto.server", reason="moto is a test dependency (pip install -e '.[test]')")
CREDENTIALS = "AKIDMOTO:S3CR3TMOTO"  # moto takes any key: the URI's own credentials open the bucket


def test_sweep_output_on_s3_through_the_cli(tmp_path, s3, monkeypatch):
    """The done-when of issue 14: `hdmap sweep run` with output s3://... exits 0 with results.parquet,
    scores.parquet and the report in the bucket; `hdmap report s3://...` re-renders it there or into --out.
    Credentials in the URI (issue 20) are printed nowhere and written nowhere: not in the bucket, not in Tune's
    experiment state or Ray's log on this machine, not in Ray's session files."""
    import ray
    from typer.testing import CliRunner

    from sweeps.cli import app

    spec = tmp_path / "s3.yaml"
    spec.write_text(f"""
name: s3sweep
data: {{root: {tmp_path / "data"}, simulate: {{n_train: 30, n_test: 20, domains: [C], seed: 0}}}}
trial:
  data: {{domain: C, image_size: [64, 192]}}
  model: {{backbone: resnet18, pretrained: false, layers: [layer2], coreset_ratio: 0.1}}
axes: {{model.k: [1, 3]}}
output: "s3://{CREDENTIALS}@lab/studies?{s3}"
tracking: {{wandb: {{mode: disabled}}}}
""")
    home = tmp_path / "home"
    if (Path.home() / ".ray").is_dir():  # an earlier local Ray in this process turned token auth on: keep its token
        shutil.copytree(Path.home() / ".ray", home / ".ray")
    monkeypatch.setenv("HOME", str(home))  # Ray's log and Tune's state: this machine's disk
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        result = CliRunner().invoke(app, ["sweep", "run", str(spec)])
        ray_session = Path(ray._private.worker._global_node.get_session_dir_path())
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    uri = f"s3://{CREDENTIALS}@lab/studies/s3sweep?{s3}"
    fs, root = pafs.FileSystem.from_uri(uri)
    names = {i.path for i in fs.get_file_info(pafs.FileSelector("lab", recursive=True))}
    for name in ("results.parquet", "scores.parquet", "report.html", "report.md", "sweep.json", "manifest.json"):
        assert f"lab/studies/s3sweep/{name}" in names, name
    table = pq.read_table("lab/studies/s3sweep/results.parquet", filesystem=fs)
    assert table.num_rows == 2 and set(table["status"].to_pylist()) == {"ok"}
    assert pq.read_table("lab/studies/s3sweep/scores.parquet", filesystem=fs).num_rows == 2 * 40
    with fs.open_input_stream("lab/studies/s3sweep/report.md") as f:
        assert "2 ok" in f.read().decode()
    assert "report: s3://***@lab/studies/s3sweep/report.html" in result.output
    assert not (tmp_path / "lab").exists()  # nothing landed on local disk by mistake
    files = [i.path for i in fs.get_file_info(pafs.FileSelector("lab", recursive=True)) if i.type == pafs.FileType.File]
    written = {path: fs.open_input_stream(path).read() for path in files}
    local = [p for folder in (tmp_path, ray_session) for p in folder.rglob("*") if p.is_file() and p != spec]
    written |= {str(p): p.read_bytes() for p in local}  # Tune's state, Ray's log, Ray's session files
    for secret in CREDENTIALS.split(":"):
        assert secret not in result.output
        assert not [path for path, content in written.items() if secret.encode() in content], secret

    out = tmp_path / "local-report"
    result = CliRunner().invoke(app, ["report", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").exists() and f"report: {out / 'report.html'}" in result.output
    assert not [s for s in CREDENTIALS.split(":") if s in result.output + (out / "report.html").read_text()]
