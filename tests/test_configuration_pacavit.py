import pytest
import torch

import pacavit
from pacavit import PaCaViTConfig, PaCaViTForImageClassification

# Parameter counts of the original models with 1000 classes (computed from the original code).
ORIGINAL_PARAMETER_COUNTS = {
    "pacavit_tiny_p2cconv_100_0": 12_200_680,
    "pacavit_small_p2cconv_100_0": 22_037_704,
    "pacavit_base_p2cconv_100_0": 46_911_304,
    "pacavit_small_p2cmlp_100_0": 22_637_268,
    "pacavit_small_p2cconv_2_0": 21_978_120,
    "pacavit_small_p2cconv_49_0": 22_006_696,
    "pacavit_small_p2cconv_49_100": 22_227_560,
    "pacavit_small_p2cconv_100_49": 22_210_696,
    "pacavit_small_p2cconv_100": 22_245_448,
    "pacavit_small_p2cconv_100_blockwise": 24_191_944,
    "pacavit_convmixer_tiny_100": 12_483_672,
    "pacavit_convmixer_small_100": 21_075_064,
    "pacavit_convmixer_base_100": 47_659_192,
}


@pytest.mark.parametrize("name,expected", ORIGINAL_PARAMETER_COUNTS.items())
def test_parameter_counts_match_original(name, expected):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = PaCaViTForImageClassification(PaCaViTConfig.from_preset(name, num_labels=1000))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_every_preset_has_an_original_name_and_vice_versa():
    assert sorted(set(pacavit.ORIGINAL_NAMES.values())) == sorted(pacavit.list_presets())
    assert len(pacavit.list_presets(include_original_names=True)) == 2 * len(pacavit.PRESETS)


def test_short_and_original_names_give_the_same_config():
    short = PaCaViTConfig.from_preset("pacavit-small-blockwise").to_dict()
    original = PaCaViTConfig.from_preset("pacavit_small_p2cconv_100_blockwise").to_dict()
    assert short == original
    assert short["clustering_schedule"] == [1, 1, 1, 1]
    # Hub ids and the original *_downstream class names resolve too
    assert PaCaViTConfig.from_preset("ivmcl/pacavit-base").hidden_sizes == [96, 192, 384, 512]
    assert PaCaViTConfig.from_preset("pacavit_tiny_p2cconv_100_0_downstream").depths == [2, 2, 4, 2]


@pytest.mark.parametrize(
    "name,rate", [("pacavit-tiny", 0.1), ("pacavit-small", 0.1), ("pacavit-base", 0.5), ("pacavit-base-teacher", 0.1)]
)
def test_presets_carry_the_original_drop_path_rates(name, rate):
    assert PaCaViTConfig.from_preset(name).drop_path_rate == rate


def test_presets_are_not_mutated_by_overrides():
    PaCaViTConfig.from_preset("pacavit-tiny", drop_path_rate=0.3, num_clusters=[1, 1, 1, 1])
    config = PaCaViTConfig.from_preset("pacavit-tiny")
    assert config.drop_path_rate == 0.1 and config.num_clusters == [100, 100, 100, 0]


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="pacavit-tiny.*pacavit-base"):
        PaCaViTConfig.from_preset("pacavit-huge")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(depths=[2, 2, 2]), "has 4 entries but `depths` has 3"),
        (dict(hidden_sizes=[30, 64, 96, 128], num_attention_heads=[4, 2, 4, 8]), "not divisible by 4 attention heads"),
        (dict(clustering_type="kmeans"), "Unknown clustering_type 'kmeans'"),
        (dict(norm_placement="middle"), "Unknown norm_placement"),
        (dict(num_clusters=[-1, 0, 0, 0]), ">= 0"),
    ],
)
def test_invalid_configs_are_explained(overrides, message):
    with pytest.raises(ValueError, match=message):
        PaCaViTConfig(**overrides)


def test_clustering_schedule():
    stagewise = PaCaViTConfig(depths=[4, 1, 1, 1])
    assert [stagewise.computes_clusters(0, j) for j in range(4)] == [True, False, False, False]
    blockwise = PaCaViTConfig(depths=[4, 1, 1, 1], clustering_schedule=[1, 0, 0, 0])
    assert [blockwise.computes_clusters(0, j) for j in range(4)] == [True, True, True, True]
    every2 = PaCaViTConfig(depths=[5, 1, 1, 1], clustering_schedule=[2, 0, 0, 0])
    assert [every2.computes_clusters(0, j) for j in range(5)] == [True, False, True, False, True]
    # a stage without clusters and teacher-driven stages own no clustering module
    assert not stagewise.computes_clusters(3, 0)
    assert not PaCaViTConfig(use_clustering_teacher=True).computes_clusters(0, 0)


def test_backbone_stage_names_and_out_features():
    config = PaCaViTConfig(out_indices=[1, 2, 3, 4])
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    reloaded = PaCaViTConfig.from_dict(config.to_dict())
    assert reloaded.out_indices == config.out_indices
