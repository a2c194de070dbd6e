"""The cluster manifests match what generates them and pass their schemas."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cluster"))

import generate_rayservice  # noqa: E402

RAYSERVICE = ROOT / "cluster" / "rayservice.yaml"
SUBSET = json.loads((ROOT / "cluster" / "schema" / "rayservice-v1-subset.json").read_text())


def _manifest() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def test_committed_rayservice_is_what_the_generator_writes():
    assert RAYSERVICE.read_text() == generate_rayservice.render(), (
        "cluster/rayservice.yaml is stale: run python cluster/generate_rayservice.py")


def test_serve_config_v2_is_serve_config_yaml():
    embedded = _manifest()["spec"]["serveConfigV2"]
    serve_config = (ROOT / "serve_config.yaml").read_text()
    assert embedded == serve_config
    assert yaml.safe_load(embedded) == yaml.safe_load(serve_config)


def test_rayservice_passes_the_crd_subset():
    jsonschema.Draft202012Validator.check_schema(SUBSET)
    jsonschema.validate(_manifest(), SUBSET)


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["spec"]["rayClusterConfig"].pop("headGroupSpec"), "headGroupSpec"),
    (lambda m: m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    (lambda m: m["spec"]["rayClusterConfig"].update(enableInTreeAutoscalling=True),
     "enableInTreeAutoscalling"),
    (lambda m: m["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(
        {"num-cpus": 0}), "num-cpus"),
])
def test_the_subset_rejects_what_the_crd_rejects(edit, field):
    manifest = copy.deepcopy(_manifest())
    edit(manifest)
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(manifest, SUBSET)
    assert field in str(info.value)


def test_rayservice_layout():
    cluster = _manifest()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu-h100", "gpu-h200"}
    for name in ("gpu-h100", "gpu-h200"):
        pod = groups[name]["template"]["spec"]
        container = pod["containers"][0]
        assert groups[name]["minReplicas"] == 0
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert "nvidia.com/gpu.product" in pod["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
        assert any(e["name"] == "HF_TOKEN" and "secretKeyRef" in e["valueFrom"]
                   for e in container["env"] if "valueFrom" in e)
        assert "-/healthz" in container["readinessProbe"]["exec"]["command"][-1]
    # Every weight path in the Serve config lies on the /models volume.
    args = yaml.safe_load(RAYSERVICE.read_text())["spec"]["serveConfigV2"]
    args = yaml.safe_load(args)["applications"][0]["args"]
    paths = [args["image_generator"]["local_dir"], args["segmenter"]["sam3"]["local_dir"],
             args["reconstructor"]["sam3d"]["checkpoint_dir"]]
    assert all(p.startswith("/models/") for p in paths)


def _launcher() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "aws-launcher.yaml").read_text())


def test_aws_launcher_passes_rays_cluster_schema():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _launcher()
    jsonschema.validate(config, schema)
    # What `ray up` runs first: AWS defaults filled in, then the schema plus Ray's own checks.
    validate_config(prepare_config(config))


def test_aws_launcher_layout():
    config = _launcher()
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    for name in ("gpu-h100", "gpu-h200"):
        assert types[name]["min_workers"] == 0
        assert types[name]["resources"]["GPU"] >= 1
        assert types[name]["resources"]["accelerator_type:H100"] == 1  # what serve_config asks
    assert "-v /models:/models:ro" in config["docker"]["run_options"]


def test_aws_launcher_schema_rejects_a_misspelt_key():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _launcher()
    config["available_node_types"]["gpu-h100"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)
