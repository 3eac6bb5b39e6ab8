"""Config loading: every shipped YAML loads; unknown keys and wrong types name the key and the file."""

import typing
from pathlib import Path

import pytest

from etva.config import (
    CHOICE_ALIASES,
    RANGES,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "ray_jobs/configs").glob("*.yaml"))


def test_defaults_build():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert set(cfg.model.experts) == {"appearance", "motion", "audio"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    cfg = load_config(path)
    assert cfg.train.epochs >= 1
    assert cfg.data.dataset in {"msrvtt", "activitynet", "lsmdc"}


def test_shipped_configs_cover_the_datasets():
    names = {p.name for p in SHIPPED}
    for required in (
        "shapes.yaml",
        "msrvtt_1k_a.yaml",
        "msrvtt_1k_b.yaml",
        "msrvtt_full.yaml",
        "activitynet.yaml",
        "lsmdc.yaml",
        "features.yaml",
    ):
        assert required in names


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  num_clusterz: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "model.num_clusterz" in str(e.value)
    assert str(f) in str(e.value)


def test_wrong_type_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "train.epochs" in msg and "int" in msg and str(f) in msg


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="train.epochs"):
        config_from_dict({"train": {"epochs": True}})


def test_nested_expert_type_checked(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  experts:\n    rgb: {kind: appearance, enabled: maybe}\n")
    with pytest.raises(ConfigError, match=r"model\.experts\.rgb\.enabled"):
        load_config(f)


def test_base_inheritance_and_error_names_child_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 3\nmodel:\n  d: 64\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmodel:\n  num_clusters: 4\n")
    cfg = load_config(child)
    assert (cfg.train.epochs, cfg.model.d, cfg.model.num_clusters) == (3, 64, 4)
    child.write_text("base: base.yaml\nmodel:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="child.yaml"):
        load_config(child)


def test_base_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_overrides_parse_types_and_keep_other_experts():
    cfg = load_config(
        REPO / "ray_jobs/configs/shapes.yaml",
        [
            "model.num_clusters=32",
            "loss.lambda_local=0.5",
            "model.experts.audio.enabled=false",
            "data.root=/tmp/x",
        ],
    )
    assert cfg.model.num_clusters == 32 and cfg.loss.lambda_local == 0.5
    assert cfg.model.experts["audio"].enabled is False
    assert cfg.model.experts["appearance"].enabled is True
    assert cfg.data.root == "/tmp/x"


def test_override_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["model.d"])
    with pytest.raises(ConfigError, match="model.dd"):
        load_config(None, ["model.dd=3"])
    with pytest.raises(ConfigError, match="model.d"):
        load_config(None, ["model.d=abc"])


def test_yaml_is_read_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_dict_roundtrip_and_flatten():
    cfg = load_config(REPO / "ray_jobs/configs/shapes.yaml")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    flat = flatten(config_to_dict(cfg))
    assert flat["model.num_clusters"] == cfg.model.num_clusters
    assert flat["model.experts.audio.kind"] == "audio"


# --------------------------------------------------------------------------------------------------
# choices and ranges are refused at load time

CHOICES = [
    ("data.dataset", "msrvt", "msrvtt, activitynet, lsmdc"),
    ("data.subset", "2k", "1k-A, 1k-B, full, 7k"),
    ("model.text.preset", "albert-large", "tiny, albert-base-v2"),
    ("model.experts.audio.kind", "sound", "appearance, motion, audio, features, pretrained"),
    ("model.vlad_mode", "joint", "shared, separate, text"),
    ("model.alignment", "globl", "global, local, both"),
    ("loss.kind", "triplet", "infonce, margin"),
    ("tune.search", "bayes", "random, grid, optuna"),
    ("tune.scheduler", "pbt", "asha, fifo"),
    ("train.precision", "fp8", "fp32, bf16, fp16"),
    ("data.cache", "ram", "none, memory, disk"),
    ("model.experts.audio.encoder", "whisper", ", clip, videomae, ast"),
    ("extract.dtype", "int8", "float32, float16"),
]


@pytest.mark.parametrize(("key", "bad", "allowed"), CHOICES, ids=[c[0] for c in CHOICES])
def test_choice_field_refuses_other_values(key, bad, allowed):
    path = REPO / "ray_jobs/configs/shapes.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(path, [f"{key}={bad}"])
    assert str(e.value) == (
        f"{path} + command-line overrides: key '{key}' = '{bad}' is not one of: {allowed}"
    )


def test_choice_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  alignment: globl\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: key 'model.alignment' = 'globl' is not one of: global, local, both"


def test_choice_is_case_sensitive_without_aliases():
    with pytest.raises(ConfigError, match="model.alignment"):
        load_config(None, ["model.alignment=Global"])


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [("1k-A", "1k-A"), ("1k-a", "1k-A"), ("1KA", "1k-A"), ("jsfusion", "1k-A"), ("9k", "1k-A"),
     ("1k-b", "1k-B"), ("miech", "1k-B"), ("FULL", "full"), ("7k", "7k")],
)  # fmt: skip
def test_msrvtt_subset_spellings_map_to_the_canonical_choice(spelling, canonical):
    assert load_config(None, [f"data.subset={spelling}"]).data.subset == canonical


def test_subset_spellings_match_the_msrvtt_loader():
    from etva.config import MsrvttSubset
    from etva.data.sources import msrvtt

    accepted = {c.lower() for c in typing.get_args(MsrvttSubset)} | set(CHOICE_ALIASES[MsrvttSubset])
    assert accepted == set(msrvtt.SUBSETS) | set(msrvtt._ALIASES)


def test_choices_match_the_component_registries():
    from etva.config import Alignment, Dataset, ExpertKind, LossKind, TextPreset, VladMode
    from etva.data.sources import SOURCES
    from etva.model.etva import ALIGNMENTS
    from etva.model.experts import EXPERT_BUILDERS
    from etva.model.netvlad import VLAD_MODES
    from etva.model.text import TEXT_PRESETS
    from etva.train.losses import LOSS_KINDS

    pairs = [
        (Dataset, SOURCES), (TextPreset, TEXT_PRESETS), (ExpertKind, EXPERT_BUILDERS),
        (VladMode, VLAD_MODES), (Alignment, ALIGNMENTS), (LossKind, LOSS_KINDS),
    ]  # fmt: skip
    for literal, registry in pairs:
        assert set(typing.get_args(literal)) == set(registry), literal


RANGE_CASES = [
    ("train.epochs", "0", ">= 1"),
    ("train.batch_size", "-4", ">= 1"),
    ("train.eval_batch_size", "0", ">= 1"),
    ("optim.lr", "0", "> 0"),
    ("data.num_frames", "0", ">= 1"),
    ("data.frame_size", "0", ">= 1"),
    ("data.max_skip_fraction", "1.5", ">= 0 and <= 1"),
    ("model.num_clusters", "0", ">= 1"),
    ("model.ghost_clusters", "-1", ">= 0"),
    ("model.alpha", "-0.1", ">= 0 and <= 1"),
    ("loss.temperature", "0", "> 0"),
    ("ray.num_workers", "0", ">= 1"),
    ("model.experts.motion.prior", "0", "> 0"),
]


@pytest.mark.parametrize(("key", "bad", "expected"), RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_range_refuses_values_outside(key, bad, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={bad}"])
    msg = str(e.value)
    assert msg.startswith("<defaults> + command-line overrides: ")
    assert f"key '{key}' = " in msg and f"(expected {expected})" in msg
    assert str(float(bad)) in msg or bad in msg


def test_range_in_a_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data:\n  max_skip_fraction: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: key 'data.max_skip_fraction' = 2.0 is out of range (expected >= 0 and <= 1)"


def test_range_bounds_are_inclusive_where_stated():
    cfg = load_config(None, ["model.alpha=0", "data.max_skip_fraction=1", "model.ghost_clusters=0"])
    assert (cfg.model.alpha, cfg.data.max_skip_fraction, cfg.model.ghost_clusters) == (0.0, 1.0, 0)
    assert load_config(None, ["model.num_clusters=1", "train.epochs=1"]).model.num_clusters == 1


def test_every_range_names_a_numeric_field():
    for cls, fields in RANGES.items():
        hints = typing.get_type_hints(cls)
        for name in fields:
            assert hints[name] in (int, float), f"{cls.__name__}.{name}"


def test_fault_injection_hooks_are_not_config_fields():
    with pytest.raises(ConfigError, match="unknown key 'train.fail_at_epoch'"):
        load_config(None, ["train.fail_at_epoch=1"])


def test_retired_features_dir_says_what_to_do_instead(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("data:\n  features_dir: /data/msrvtt/features\n")
    with pytest.raises(ConfigError, match=r"old.yaml: key 'data.features_dir' was retired: .*import-features"):
        load_config(path)
    path.write_text("data:\n  features_dir: ''\n")  # unset, as older checkpoints' config.yaml has it
    assert load_config(path).data.feature_store == ""
