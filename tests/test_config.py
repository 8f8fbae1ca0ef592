from pathlib import Path

import pytest

from recsys_moe.config import ConfigError, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.experiment.name


def test_override_sets_nested_value_with_yaml_typing():
    cfg = load_config(ROOT / "configs/synthetic.yaml", ["data.synthetic.num_impressions=1234", "experiment.seed=7"])
    assert cfg.data.synthetic.num_impressions == 1234
    assert cfg.experiment.seed == 7


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  synthetic:\n    num_userz: 10\n")
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert str(f) in str(exc.value)
    assert "data.synthetic.num_userz: unknown key" in str(exc.value)


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match=r"data\.synthetic\.nope: unknown key"):
        load_config(ROOT / "configs/synthetic.yaml", ["data.synthetic.nope=1"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.synthetic.num_users=-5", "data.synthetic.num_users"),
        ("data.synthetic.click_rate=1.5", "data.synthetic.click_rate"),
        ("data.synthetic.task_correlation=2", "data.synthetic.task_correlation"),
        ("data.source=parquet", "data.source"),
        ("data.synthetic.start_date=yesterday", "data.synthetic.start_date"),
        ("experiment.name=has space", "experiment.name"),
    ],
)
def test_bad_value_names_key_and_value(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(ROOT / "configs/synthetic.yaml", [override])
    assert key in str(exc.value)
    assert override.split("=", 1)[1] in str(exc.value)


def test_cross_field_check():
    with pytest.raises(ConfigError, match="num_impressions"):
        load_config(None, ["data.synthetic.num_impressions=3", "data.synthetic.num_days=5"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["data.source"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"data": {"source": "x"}}, ["data.source.deeper=1"])
    with pytest.raises(ConfigError, match="empty key"):
        apply_overrides({}, ["data..x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_content_hash_changes_with_config():
    a = load_config(None)
    b = load_config(None, ["experiment.seed=1"])
    assert a.content_hash() == load_config(None).content_hash()
    assert a.content_hash() != b.content_hash()
    # where a job runs changes none of its outputs
    engines = load_config(None, ["scoring.engine=ray", "transform.engine=ray", "transform.partitions=8"])
    assert engines.content_hash() == a.content_hash()
    assert load_config(None, ["training.sharding.mode=always"]).content_hash() != a.content_hash()


@pytest.mark.parametrize(("override", "message"), [
    ("tasks.monitor=auc_ctr", "tasks.monitor: unknown metric 'auc_ctr' (metrics are now named <task>/<metric>: did you mean 'ctr/auc'?)"),
    ("tasks.monitor=ctr/gauc", "tasks.monitor: unknown metric 'ctr/gauc'"),  # evaluation-only: training does not compute it
    ("pipeline.promotion.metric=ctr/calibration", "has no better direction"),
    ("pipeline.promotion.metric=rmse_watch_time", "did you mean 'watch_time/rmse_log1p'"),
])
def test_metric_names_come_from_one_vocabulary(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_config(ROOT / "configs/synthetic.yaml", [override])


def test_directions_follow_the_vocabulary():
    from recsys_moe.metrics import names

    cfg = load_config(ROOT / "configs/synthetic.yaml", ["tasks.monitor=watch_time/rmse_log1p",
                                                        "pipeline.promotion.metric=ranking/ndcg_at_10"])
    assert names.mode(cfg.tasks.monitor) == "min" and cfg.pipeline.promotion.higher_is_better
    assert names.higher_is_better("val/ctr/logloss") is False and names.higher_is_better("test/ctr/auc") is True
    assert names.validation_keys(cfg.tasks.kinds) == ["loss", "ctr/auc", "ctr/logloss", "ctr/calibration", "ctr/ece",
                                                      "watch_time/rmse_log1p", "watch_time/spearman", "watch_time/calibration"]
