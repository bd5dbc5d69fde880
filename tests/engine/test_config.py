import pytest

from nanxi_tune.engine import config as C


def test_presets_load_and_name_themselves():
    assert {"demo", "coco-640", "bccd"} <= set(C.preset_names())
    for name in C.preset_names():
        cfg = C.load_preset(name)
        assert cfg.preset == name


def test_coco640_is_the_notes_settings():
    cfg = C.load_preset("coco-640")
    assert cfg.preprocess.input_size == 640 and cfg.preprocess.resize == "same_padding"
    assert cfg.train.warmup_steps == 0 and cfg.train.ema_decay == 0.99
    assert cfg.eval.qmv == 100 and cfg.eval.rsr == 3000 and cfg.budget.max_days == 4
    assert cfg.neck.spp_kernels == (5, 9, 13) and cfg.neck.out_stride == 4
    assert cfg.head.norm == "none" and cfg.head.range_norm_act == "sigmoid"
    assert cfg.principles.weights_init == "trunc_normal" and not cfg.backbone.input_channels_bn


def test_every_field_has_a_description():
    for group in C.GROUPS:
        for name, info in C.Config.model_fields[group].annotation.model_fields.items():
            assert info.description, f"{group}.{name} lacks a description"
    assert C.field_info("train.base_lr").json_schema_extra["zh"] == "base_lr: 基础学习率"


@pytest.mark.parametrize("key,value,fragment", [
    ("train.base_lr", -1, "greater than 0"),
    ("train.base_lr", "fast", "valid number"),
    ("head.norm", "gn", "'none' or 'bn'"),
    ("preprocess.resize", "crop", "'same_padding' or 'letterbox'"),
    ("preprocess.input_size", 100, "multiple of 32"),
    ("normalize.std", [1, 0, 1], "greater than 0"),
    ("neck.spp_kernels", [4], "odd"),
    ("train.milestones", [0.9, 0.5], "increasing"),
    ("train.device", "tpu", "auto, cpu"),
    ("train.nope", 1, "unknown key"),
    ("nope.x", 1, "unknown key"),
])
def test_bad_values_name_the_key_value_and_what_is_allowed(key, value, fragment):
    with pytest.raises(C.ConfigError) as err:
        C.with_updates(C.load_preset("demo"), {key: value})
    text = str(err.value)
    assert key in text and fragment in text and repr(value) in text


def test_booleans_are_not_kernel_sizes():
    with pytest.raises(C.ConfigError, match=r"neck.spp_kernels = True: Input should be a valid integer"):
        C.with_updates(C.load_preset("demo"), {"neck.spp_kernels": [True]})


def test_all_problems_are_reported_at_once():
    with pytest.raises(C.ConfigError) as err:
        C.loads('[train]\nbase_lr = "x"\nzzz = 1\n[preprocess]\ninput_size = 100\n')
    keys = [p[0] for p in err.value.problems]
    assert keys == ["preprocess.input_size", "train.base_lr", "train.zzz"]


def test_broken_toml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        C.loads("[train\nbase_lr = 1")
    with pytest.raises(C.ConfigError, match="no such file"):
        C.load(tmp_path / "nope.toml")
    with pytest.raises(C.ConfigError, match="bundled presets: .*demo"):
        C.load_preset("no-such-preset")


def test_set_parsing_uses_toml_values():
    sets = C.parse_sets(["train.base_lr=0.003", "augment.random_flip=0", "neck.spp_kernels=[3,5]",
                         "preprocess.resize=letterbox", "backbone.input_channels_bn=true"])
    cfg = C.with_updates(C.load_preset("demo"), sets)
    assert cfg.train.base_lr == 0.003 and cfg.neck.spp_kernels == (3, 5)
    assert cfg.preprocess.resize == "letterbox" and cfg.backbone.input_channels_bn is True
    with pytest.raises(C.ConfigError, match="key=value"):
        C.parse_sets(["train.base_lr"])


def test_save_roundtrip_and_diff_against_preset(tmp_path):
    demo = C.load_preset("demo")
    edited = C.with_updates(demo, {"train.base_lr": 0.01, "head.channels": 48})
    path = C.save(edited, tmp_path / "mine.toml")
    again = C.load_preset(str(path))
    assert again == edited and again.preset == "demo"
    assert C.diff(C.base_of(again), again) == {"train.base_lr": (0.003, 0.01), "head.channels": (32, 48)}


def test_linear_lr_scaling():
    cfg = C.with_updates(C.load_preset("demo"), {"train.base_lr": 0.001, "train.base_batch_size": 16,
                                                 "data.batch_size": 64})
    assert cfg.lr == pytest.approx(0.004)


def test_live_keys():
    assert C.is_live("train.base_lr") and C.is_live("eval.val_data_mode")
    assert not C.is_live("train.seed") and not C.is_live("backbone.width")
