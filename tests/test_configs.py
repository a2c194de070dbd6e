"""Both Serve configs pass Serve's schema and our settings; bad args fail with the key's name."""
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import build_app
from sam3d_common.settings import ConfigError, EncoderBatching, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.local.yaml"])
def test_config_passes_serve_schema_and_builds(name):
    cfg = yaml.safe_load((ROOT / name).read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    app_cfg = schema.applications[0]
    assert app_cfg.import_path == "serve_app.app:build_app"
    settings = load_settings(app_cfg.args)
    build_app(app_cfg.args)  # binds the graph without starting it
    names = {d.name for d in app_cfg.deployments}
    assert names == {"Ingress", "JobManager", "PromptEnhancer", "ImageGenerator", "Segmenter",
                     "Reconstructor", "MeshBaker"}
    job_manager = next(d for d in app_cfg.deployments if d.name == "JobManager")
    assert job_manager.num_replicas == 1  # every job's state lives in one place
    if name == "serve_config.yaml":
        assert settings.segmenter.backend == "sam3" and settings.reconstructor.backend == "sam3d"
        gpu = {d.name: d.ray_actor_options.num_gpus for d in app_cfg.deployments
               if d.ray_actor_options.num_gpus}
        assert gpu["Reconstructor"] == 1 and gpu["Segmenter"] > 0
        assert all(d.autoscaling_config for d in app_cfg.deployments if d.name != "JobManager")
        segmenter = next(d for d in app_cfg.deployments if d.name == "Segmenter")
        batching = EncoderBatching.model_validate(segmenter.user_config)
        assert segmenter.max_ongoing_requests >= batching.max_batch_size
    else:
        assert settings.segmenter.backend == "grabcut" and settings.reconstructor.backend == "inflation"
        cpus = sum(d.ray_actor_options.num_cpus for d in app_cfg.deployments)
        assert cpus <= 2  # the whole local graph fits a 2-core laptop


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_settings({"reconstructor": {"inflaton": {}}})
    assert "args.reconstructor.inflaton" in str(info.value)


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_settings({"segmenter": {"backend": "magic"}})
    assert "args.segmenter.backend" in str(info.value)


def test_production_replicas_fail_at_start_naming_what_is_missing():
    """serve_config.yaml's real-model stages, built as their replicas would be on a machine
    without the weights: each says what is missing, where it looked, and how to get it."""
    from sam3d_common.errors import ModelUnavailable
    from deployments.image_generator import make_backend as make_generator
    from deployments.reconstructor import make_backend as make_reconstructor
    from deployments.segmenter import make_backend as make_segmenter

    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    s = load_settings(cfg["applications"][0]["args"])
    cases = [
        (lambda: make_segmenter(s.segmenter), ["facebook/sam3", "/models/sam3", "gated"]),
        (lambda: make_reconstructor(s.reconstructor),
         ["facebook/sam-3d-objects", "/models/sam-3d-objects/checkpoints", "not found"]),
        (lambda: make_generator(s.image_generator), ["stabilityai/sdxl-turbo", "/models/sdxl-turbo"]),
    ]
    for build, needles in cases:
        with pytest.raises(ModelUnavailable) as info:
            build()
        for needle in needles:
            assert needle in info.value.message, (needle, info.value.message)


def test_segmenter_user_config_is_checked_against_max_ongoing_requests(monkeypatch):
    """The encoder's batch size comes from Serve's user_config; a replica whose
    max_ongoing_requests could never fill a batch refuses it, naming both figures."""
    from types import SimpleNamespace

    import deployments.segmenter as segmenter

    config = SimpleNamespace(max_ongoing_requests=4, user_config=None)
    monkeypatch.setattr(segmenter, "_deployment_config", lambda: config)
    assert segmenter._batching({"max_batch_size": 4, "batch_wait_timeout_s": 0.2}).max_batch_size == 4
    with pytest.raises(ConfigError, match=r"max_ongoing_requests \(4\) is below user_config.max_batch_size \(8\)"):
        segmenter._batching({"max_batch_size": 8})
    with pytest.raises(ConfigError, match="max_batch"):
        segmenter._batching({"max_batch": 2})
    # A running replica (GrabCut here: no encoder to compile) takes a new batch size without a restart.
    config.max_ongoing_requests = 8
    replica = segmenter.Segmenter.func_or_class({"backend": "grabcut"})
    replica.reconfigure({"max_batch_size": 2, "batch_wait_timeout_s": 0.1})
    with pytest.raises(ConfigError):
        replica.reconfigure({"max_batch_size": 16})
