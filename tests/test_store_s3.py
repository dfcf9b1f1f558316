"""Results on object storage: a sweep whose `output` is s3:// (a moto S3 server on loopback) lands every row there."""

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from sweeps.runner import run_sweep
from sweeps.spec import load_spec

pytestmark = pytest.mark.slow
moto_server = pytest.importorskip("moto.server", reason="moto is a test dependency (pip install -e '.[test]')")


def test_sweep_output_on_s3(tmp_path, s3):
    import ray

    spec = tmp_path / "s3.yaml"
    spec.write_text(f"""
name: s3sweep
data: {{root: {tmp_path / 'data'}, simulate: {{n_train: 30, n_test: 20, domains: [C], seed: 0}}}}
trial:
  data: {{domain: C, image_size: [64, 192]}}
  model: {{backbone: resnet18, pretrained: false, layers: [layer2], coreset_ratio: 0.1}}
axes: {{model.k: [1, 3]}}
output: "s3://lab/studies?{s3}"
tracking: {{wandb: {{mode: disabled}}}}
""")
    plan = load_spec(spec)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        outcome = run_sweep(plan, live=False)
    finally:
        ray.shutdown()
    assert outcome.ok == 2
    fs, root = pafs.FileSystem.from_uri(f"s3://lab/studies?{s3}")
    names = {i.path for i in fs.get_file_info(pafs.FileSelector("lab", recursive=True))}
    assert "lab/studies/s3sweep/results.parquet" in names and "lab/studies/s3sweep/scores.parquet" in names
    table = pq.read_table("lab/studies/s3sweep/results.parquet", filesystem=fs)
    assert table.num_rows == 2 and set(table["status"].to_pylist()) == {"ok"}
    assert not (tmp_path / "lab").exists()  # nothing landed on local disk by mistake
