"""Bad configs fail before compiling, with messages that name the key and the fix."""

import pytest

from jvlm.config import ConfigError, apply_override, config_differences, load_config, to_dict
from jvlm.sharding import resolve_mesh_shape
from jvlm.train import loop

TINY = "configs/siglip_shapes.py:tiny"


def build(*overrides, devices=8):
    import jax
    cfg = load_config(TINY, [f"--config.{o}" for o in overrides])
    return loop.build(cfg, None, devices=jax.devices()[:devices])


def test_tiny_config_builds():
    task, mesh = build()
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "model": 1}


def test_overrides_keep_types():
    cfg = load_config(TINY, ["--config.batch_size=64", "--config.optimizer.learning_rate=3", "--config.data.flip=false",
                             "--config.model.image.pool=gap"])
    assert cfg.batch_size == 64 and cfg.optimizer.learning_rate == 3.0 and isinstance(cfg.optimizer.learning_rate, float)
    assert cfg.data.flip is False and cfg.model.image.pool == "gap"


@pytest.mark.parametrize("override, match", [
    ("config.batch_sise=4", r"unknown config key 'batch_sise'.*Did you mean 'batch_size'"),
    ("config.model.image.widht=4", r"unknown config key 'model.image.widht'.*model.image has no 'widht'"),
    ("config.batch_size=abc", r"'batch_size' expects int"),
    ("config.batch_size=1.5", r"'batch_size' expects int .*got '1.5'"),
    ("config.data.flip=maybe", r"'data.flip' is a bool"),
    ("config.model=3", r"'model' is a group"),
    ("config.batch_size", r"has no '='"),
])
def test_bad_overrides(override, match):
    cfg = load_config(TINY)
    with pytest.raises(ConfigError, match=match):
        apply_override(cfg, override)


@pytest.mark.parametrize("overrides, match", [
    (("batch_size=12",), r"batch_size=12 is not divisible by data-parallel size 8"),
    (("batch_size=16", "grad_accum_steps=4"), r"not divisible by .* x grad_accum_steps 4 = 32"),
    (("model.image.patch_size=5",), r"image_size=32 is not divisible by config.model.image.patch_size=5"),
    (("model.text.num_heads=3",), r"model.text.width=32 is not divisible by config.model.text.num_heads=3"),
    (("mesh.fsdp=3",), r"fixed axes use 3 devices, which does not divide the 8"),
    (("mesh.fsdp=-1",), r"only one axis may be -1"),
    (("mesh.data=4",), r"uses 4 devices but 8 are available"),
    (("optimizer.name=adamx",), r"optimizer.name='adamx' is not one of"),
    (("optimizer.schedule=cosin",), r"optimizer.schedule='cosin' is not one of"),
    (("optimizer.warmup_steps=100",), r"warmup_steps=100 exceeds total_steps=20"),
    (("optimizer.freeze=img/[",), r"not a valid regex"),
    (("model.dtype=float8",), r"model.dtype='float8' is not one of"),
    (("model.loss=hinge",), r"model.loss='hinge' is not one of"),
    (("log_every=0",), r"log_every must be >= 1"),
    (("eval.batch_size=12",), r"eval.batch_size=12 is not divisible by the data-parallel size 8"),
    (("task=gan",), r"config.task='gan' is unknown; registered tasks: contrastive"),
])
def test_impossible_combinations(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(*overrides)


def test_unknown_top_level_key_in_config_file():
    import jax
    cfg = load_config(TINY)
    cfg.unlock()
    cfg.totl_steps = 5
    with pytest.raises(ConfigError, match=r"unknown top-level config keys \['totl_steps'\]"):
        loop.build(cfg, None, devices=jax.devices())


def test_freeze_pattern_must_match_something():
    import jax
    cfg = load_config(TINY, ["--config.optimizer.freeze=image_tower/.*"])
    task, mesh = loop.build(cfg, None, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match=r"matches no parameter; paths look like"):
        loop.abstract_state(task, cfg, mesh)


def test_missing_file_and_variant():
    with pytest.raises(ConfigError, match=r"no config file at 'configs/nope.py'"):
        load_config("configs/nope.py")
    with pytest.raises(ValueError, match=r"unknown variant 'huge'"):
        load_config("configs/siglip_shapes.py:huge")


def test_mesh_shape_resolution():
    assert resolve_mesh_shape({"data": -1, "fsdp": 2, "model": 1}, 8) == {"data": 4, "fsdp": 2, "model": 1}
    assert resolve_mesh_shape({"data": 1, "fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "model": 1}
    with pytest.raises(ConfigError, match=r"unknown axes \['tensor'\]"):
        resolve_mesh_shape({"tensor": 2}, 8)


def test_config_differences_ignore_run_length():
    a = to_dict(load_config(TINY))
    b = to_dict(load_config(TINY, ["--config.total_steps=50", "--config.log_every=5",
                                   "--config.optimizer.learning_rate=0.5"]))
    assert config_differences(a, b) == ["optimizer.learning_rate: 0.002 -> 0.5"]


def test_cli_reports_config_errors(tmp_path):
    from helpers import run_cli
    proc = run_cli(["experiments.train", "--config", TINY, "--workdir", str(tmp_path), "--config.batch_sise=3"],
                   check=False)
    assert proc.returncode == 2
    assert "unknown config key 'batch_sise'" in proc.stderr and "Traceback" not in proc.stderr


def test_clip_config_is_siglip_with_the_softmax_loss():
    clip = load_config("configs/clip_shapes.py:tiny")
    assert clip.model.loss == "softmax" and clip.model.text.causal and clip.model.text.pool == "eos"
    assert load_config("configs/clip_shapes.py:B/16").model.loss_impl == "all_gather"
    from jvlm.tasks.contrastive import ContrastiveTask
    import jax
    boxed, _ = jax.eval_shape(ContrastiveTask(clip, None, None).init, jax.random.PRNGKey(0))
    assert "logit_bias" not in boxed["main"]
    assert float(ContrastiveTask(clip, None, None).init(jax.random.PRNGKey(0))[0]["main"]["logit_scale"].unbox()) \
        == pytest.approx(2.6593, abs=1e-3)  # log(1/0.07)


def test_siglip_initializes_temperature_and_bias_as_the_paper():
    import jax
    import numpy as np
    from jvlm.tasks.contrastive import ContrastiveTask
    p = ContrastiveTask(load_config(TINY), None, None).init(jax.random.PRNGKey(0))[0]["main"]
    assert float(p["logit_scale"].unbox()) == pytest.approx(np.log(10.0)) and float(p["logit_bias"].unbox()) == -10.0


def test_the_32px_judge_variant_keeps_the_default_token_grid():
    # The judge of 32 px generators: 32 px images, patch 4, so the tower sees the default's 8x8 tokens.
    import jax
    shapes_by_variant = {}
    for variant in ("", "judge32"):
        cfg = load_config(f"configs/siglip_shapes.py:{variant}")
        task, mesh = loop.build(cfg, None, devices=jax.devices()[:1])
        params = jax.eval_shape(lambda: task.init(jax.random.key(0))[0])
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        pos = [leaf for path, leaf in leaves if "pos_embedding" in jax.tree_util.keystr(path) and "img" in
               jax.tree_util.keystr(path)]
        shapes_by_variant[variant] = (cfg.data.image_size, cfg.model.image.patch_size, pos[0].shape)
    assert shapes_by_variant[""][:2] == (64, 8) and shapes_by_variant["judge32"][:2] == (32, 4)
    assert shapes_by_variant[""][2] == shapes_by_variant["judge32"][2]


# Every config whose task reads only the built-in shapes data (user data is the contrastive task's so far).
SHAPES_ONLY = ["vae_shapes", "vqvae_shapes", "vqgan_shapes", "dvae_shapes", "ddpm_shapes", "ldm_shapes"]


@pytest.mark.parametrize("name", SHAPES_ONLY)
def test_a_data_source_the_task_does_not_read_is_refused_before_anything_compiles(name):
    import jax
    spec = f"configs/{name}.py:tiny"
    task, _ = loop.build(load_config(spec), None, devices=jax.devices()[:1])  # shapes: accepted
    reader = "diffusion" if name in ("ddpm_shapes", "ldm_shapes") else task.config.task
    for source in ("folder", "tfds"):
        with pytest.raises(ConfigError, match=rf"config.data.source='{source}': the {reader} task reads only "
                                              rf"data.source='shapes' for now; so far only the contrastive task"):
            loop.build(load_config(spec, [f"--config.data.source={source}"]), None, devices=jax.devices()[:1])
    # The folder source's own key: not a bare "unknown key", but what the task does not read.
    with pytest.raises(ConfigError, match=rf"unknown config key 'data.path'.* data.path belongs to data.source="
                                          rf"'folder' \(user data\), which config.task='{task.config.task}' does "
                                          rf"not read yet"):
        load_config(spec, ["--config.data.source=folder", "--config.data.path=/tmp/mine.jsonl"])


def test_the_contrastive_task_names_the_sources_it_reads():
    with pytest.raises(ConfigError, match=r"config.data.source='csv': the contrastive task reads only "
                                          r"data.source='shapes' or 'folder' or 'tfds'\.$"):
        build("data.source=csv")


def test_tokenize_refuses_a_data_source_it_does_not_read(tmp_path, capsys):
    from experiments import tokenize
    with pytest.raises(SystemExit) as exit_info:
        tokenize.main(["--config", "configs/vqgan_shapes.py:tiny", "--workdir", str(tmp_path),
                       "--config.data.source=folder"])
    assert exit_info.value.code == 2
    assert ("config error: config.data.source='folder': experiments.tokenize reads only data.source='shapes'"
            in capsys.readouterr().err)
