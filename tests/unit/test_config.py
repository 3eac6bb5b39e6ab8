"""Config loading: every shipped YAML loads; unknown keys and wrong types name the key and the file."""

from pathlib import Path

import pytest

from etva.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    p
    for d in ("ray_jobs/configs", "tuning/configs")
    for p in (REPO / d).glob("*.yaml")
    if (REPO / d).exists()
)


def test_defaults_build():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert set(cfg.model.experts) == {"appearance", "motion", "audio"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    cfg = load_config(path)
    assert cfg.train.epochs >= 1
    assert cfg.data.dataset in {"msrvtt", "activitynet", "lsmdc", "features"}


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


def test_roundtrip_and_flatten(tmp_path):
    cfg = load_config(REPO / "ray_jobs/configs/shapes.yaml")
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    flat = flatten(config_to_dict(cfg))
    assert flat["model.num_clusters"] == cfg.model.num_clusters
    assert flat["model.experts.audio.kind"] == "audio"
