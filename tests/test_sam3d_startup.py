"""SAM 3D Objects backend startup checks, run for real on CPU: the checkpoint folder and the files
pipeline.yaml names, the Hugging Face cache default, the package and CUDA probes, the allow-list
of pipeline.yaml `_target_`s, and the factory's error when the weights are missing.
"""
from __future__ import annotations

import pytest

from sam3d_common.errors import ModelUnavailable
from deployments.reconstructor.sam3d import (CHECKPOINT_FILES, Sam3dReconstructor,
                                             required_files, startup_problems)
from deployments.reconstructor.sam3d_upstream import unsafe_targets
from sam3d_common.settings import Sam3dSettings


def test_missing_folder_names_path_hub_id_gating_and_download(tmp_path):
    folder = tmp_path / "nope" / "checkpoints"
    with pytest.raises(ModelUnavailable) as err:
        Sam3dReconstructor(Sam3dSettings(checkpoint_dir=str(folder)))
    msg = str(err.value)
    assert f"reconstructor.sam3d.checkpoint_dir '{folder}' does not exist" in msg
    assert "facebook/sam-3d-objects" in msg and "gated" in msg
    assert "hf download facebook/sam-3d-objects" in msg and "HF_TOKEN" in msg


def test_missing_files_are_named_exactly(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    present = {"pipeline.yaml", "ss_generator.yaml", "ss_generator.ckpt", "ss_decoder.yaml"}
    for name in present:
        (folder / name).write_text("")  # an empty pipeline.yaml: the default file list applies
    _, problems = startup_problems(Sam3dSettings(checkpoint_dir=str(folder)))
    (files_line,) = [p for p in problems if "checkpoint files missing" in p]
    listed = files_line.split(": ", 1)[1].split(", ")
    assert listed == [f for f in CHECKPOINT_FILES if f not in present]
    assert str(folder) in files_line


def test_files_named_by_pipeline_yaml_are_checked(tmp_path):
    (tmp_path / "pipeline.yaml").write_text(
        "ss_generator_config_path: gen.yaml\nss_generator_ckpt_path: weights/gen.ckpt\n"
        "pad_size: 1.0\ndtype: float16\n")
    (tmp_path / "gen.yaml").write_text("")
    assert required_files(tmp_path) == ["pipeline.yaml", "gen.yaml", "weights/gen.ckpt"]
    _, problems = startup_problems(Sam3dSettings(checkpoint_dir=str(tmp_path)))
    assert any(p.endswith(": weights/gen.ckpt") for p in problems)


def test_complete_folder_still_reports_package_and_cuda_here(tmp_path, monkeypatch):
    from deployments.reconstructor import sam3d_upstream

    for name in CHECKPOINT_FILES:
        (tmp_path / name).write_text("")
    monkeypatch.setattr(sam3d_upstream, "package_problem", lambda: "no package (test)")
    monkeypatch.setattr(sam3d_upstream, "cuda_problem", lambda: "no CUDA (test)")
    with pytest.raises(ModelUnavailable) as err:
        Sam3dReconstructor(Sam3dSettings(checkpoint_dir=str(tmp_path)))
    msg = str(err.value)
    assert "no package (test)" in msg and "no CUDA (test)" in msg
    assert "checkpoint" not in msg.split("start:")[1]  # the files are all there
    assert "hf download" not in msg


def test_real_environment_checks_on_this_machine():
    """This machine has neither the package nor CUDA; the real probes must say so."""
    import torch

    from deployments.reconstructor import sam3d_upstream

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert "no CUDA device" in sam3d_upstream.cuda_problem()
    if sam3d_upstream.package_problem() is not None:
        assert "sam3d_objects" in sam3d_upstream.package_problem()


def test_hub_cache_is_the_default_place(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    folder, problems = startup_problems(Sam3dSettings())
    assert str(folder).startswith(str(tmp_path / "models--facebook--sam-3d-objects"))
    assert "the Hugging Face cache" in problems[0] and "checkpoint_dir is not set" in problems[0]
    snap = tmp_path / "models--facebook--sam-3d-objects" / "snapshots" / "abc123" / "checkpoints"
    snap.mkdir(parents=True)
    (tmp_path / "models--facebook--sam-3d-objects" / "refs").mkdir()
    (tmp_path / "models--facebook--sam-3d-objects" / "refs" / "main").write_text("abc123\n")
    for name in CHECKPOINT_FILES:
        (snap / name).write_text("")
    folder, problems = startup_problems(Sam3dSettings())
    assert folder == snap
    assert not any("checkpoint" in p for p in problems)


def test_pipeline_yaml_targets_are_allow_listed():
    config = {"_target_": "sam3d_objects.pipeline.X",
              "depth_model": {"_target_": "moge.model.v1.MoGeModel.from_pretrained"},
              "ss_preprocessor": {"img_transform": {"transforms": [
                  {"_target_": "torchvision.transforms.Resize"},
                  {"_target_": "os.system", "_partial_": True}]}},
              "other": {"_target_": "builtins.eval"}}
    assert unsafe_targets(config) == [
        "ss_preprocessor.img_transform.transforms[1]._target_: os.system",
        "other._target_: builtins.eval"]


def test_reference_pipeline_yaml_passes_the_allow_list():
    import pathlib

    import yaml

    ref = pathlib.Path(__file__).resolve().parents[2] / "shared/reference/sam3d-objects-configs"
    if not (ref / "pipeline.yaml").is_file():
        pytest.skip("shared/reference is not beside this checkout")
    for name in ("pipeline.yaml", "ss_generator.yaml", "slat_decoder_gs.yaml"):
        assert unsafe_targets(yaml.safe_load((ref / name).read_text())) == []
    names = required_files(ref)
    assert set(names) == set(CHECKPOINT_FILES)


def test_factory_with_missing_weights_is_model_unavailable(tmp_path):
    from deployments.reconstructor import make_backend
    from sam3d_common.settings import ReconstructorSettings

    with pytest.raises(ModelUnavailable, match="checkpoint folder not found"):
        make_backend(ReconstructorSettings(
            backend="sam3d", sam3d=Sam3dSettings(checkpoint_dir=str(tmp_path / "x"))))
