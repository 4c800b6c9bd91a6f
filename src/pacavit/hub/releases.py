"""The released PaCa-ViT checkpoints and the numbers the paper / original README reports for them.

This is the ONE data source of the model cards (`model_cards/`, written by `python model_cards/generate.py`)
and of the table "released file -> Hub id -> card" in docs/hub.md. One entry per row of the original README's tables
(ImageNet-1k, MS-COCO Mask R-CNN 1x, ADE20K; ablations included), in the README's order.

Fields:
    section: "imagenet" | "coco" | "ade20k"
    row: the row's label in the README
    preset: the pacavit preset of the backbone the card describes
    linked_file: the file the README row links (None: no link)
    model_file: the file name of the model the card describes (differs from `linked_file` where the README
        links another model's file; such files are not released: `released` is False)
    released: whether the weights the card describes are linked by the README
    parameters: exact parameter count of the card's model, built with the original code (the checkpoint
        manifests' `num_parameters`; tested against them and, for classifiers, against our model)
    readme_params: the README's #params column, as printed
    flops: the README's FLOPs column (GFLOPs; ImageNet at 224x224, COCO at 1280x800, ADE20K at 512x512)
    metrics: the reported numbers (ImageNet top-1 %, COCO box/mask AP, ADE20K single-scale mIoU %)
    attributable: False where the numbers may belong to another model than the file (then the card shows
        them as the README's, without a model-index)
    note: what is wrong or ambiguous in the README for this row
"""

from __future__ import annotations

from ..configuration_pacavit import HUB_ORGANISATION

# COCO metric names, in the README's column order (the headers were lost in the extracted README text; the
# order box AP, AP50, AP75, mask AP, AP50, AP75 is the paper's Table and matches e.g. 43.3 box / 39.6 mask AP).
COCO_METRICS = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")

_SMALL_ABLATIONS = [  # (label, preset suffix, builder suffix)
    ("stage-wise [2,2,2,0]", "clusters-2-2-2-0", "2_0"),
    ("stage-wise [49,49,49,0]", "clusters-49-49-49-0", "49_0"),
    ("stage-wise [49,64,81,100]", "clusters-49-64-81-100", "49_100"),
    ("stage-wise [100,81,64,49]", "clusters-100-81-64-49", "100_49"),
    ("stage-wise [100,100,100,100]", "clusters-100-100-100-100", "100"),
    ("block-wise [100,100,100,100]", "blockwise", "100_blockwise"),
]


def _release(section, row, preset, model_file, parameters, readme_params, flops, metrics, linked=None, **fields):
    """One entry (the fields of the module doc); `fields` overrides `released`/`attributable`/`note` or adds `head`."""
    entry = dict(section=section, row=row, preset=preset, linked_file=linked or model_file, model_file=model_file)
    entry.update(parameters=parameters, readme_params=readme_params, flops=flops, metrics=metrics)
    return {**entry, "released": True, "attributable": True, "note": None, **fields}


def _imagenet(row, preset, builder, parameters, readme_params, flops, top1, linked=None, released=True, note=None):
    model_file = f"IMNET_224_{builder}.pth"
    metrics = {"top1": top1}
    return _release("imagenet", row, preset, model_file, parameters, readme_params, flops, metrics, linked,
                    released=released, note=note)  # fmt: skip


def _coco(row, preset, builder, parameters, readme_params, flops, values, linked=None, attributable=True, note=None):
    model_file = f"mask_rcnn_{builder}_mstrain_480_800_1x_coco.pth"
    metrics = dict(zip(COCO_METRICS, values))
    return _release("coco", row, preset, model_file, parameters, readme_params, flops, metrics, linked,
                    attributable=attributable, note=note)  # fmt: skip


def _ade20k(row, preset, builder, head, parameters, readme_params, flops, miou, linked=None, note=None):
    model_file = f"{'pacahead' if head == 'paca' else 'upernet'}_{builder}_512x512_160k_ade20k.pth"
    return _release("ade20k", row, preset, model_file, parameters, readme_params, flops, {"miou": miou}, linked,
                    head=head, note=note)  # fmt: skip


_ADE20K_ABLATION_NOTE = (
    "The README row says PaCa head and its #params match the PaCa-head model, but its link names the file "
    "`{linked}` (a UperNet name; the repository has no UperNet config for this backbone). This card describes "
    "the PaCa-head model of the row. Only the downloaded file can tell which head it holds: the converter reads "
    "the head from the weights and accepts both. All ADE20K backbones use 200 clusters in every clustered stage "
    "(`downstream_cluster_num`), so this ablation differs from the others only by its ImageNet pre-training."
)

# a table, one release a row as the original README lists them: kept out of the formatter
# fmt: off
RELEASES: list[dict] = [
    # ---------------------------------------------------------------- ImageNet-1k (224x224)
    _imagenet("PaCa-Tiny (conv)", "pacavit-tiny", "pacavit_tiny_p2cconv_100_0", 12_200_680, "12.2M", 3.2, 80.9),
    _imagenet("PaCa-Small (conv)", "pacavit-small", "pacavit_small_p2cconv_100_0", 22_037_704, "22.0M", 5.5, 83.08),
    _imagenet("PaCa-Small (mlp)", "pacavit-small-mlp", "pacavit_small_p2cmlp_100_0", 22_637_268, "22.6M", 5.9, 83.13),
    _imagenet(
        "PaCa-Small (teacher)", "pacavit-small-teacher", "pacavit_convmixer_small_100", 21_075_064, "21.1M", 5.4, 83.17
    ),
    _imagenet("PaCa-Base (conv)", "pacavit-base", "pacavit_base_p2cconv_100_0", 46_911_304, "46.9M", 9.5, 83.96),
    _imagenet(
        "PaCa-Base (teacher)", "pacavit-base-teacher", "pacavit_convmixer_base_100", 47_659_192, "46.7M", 9.7, 84.22,
        note="The README's #params (46.7M) is a typo: the architecture has 47.66M parameters (the same backbone "
        "gives 48.76M in the ADE20K PaCa-head model, README 48.8M, consistent).",
    ),
    *[
        _imagenet(
            label, f"pacavit-small-{suffix}", f"pacavit_small_p2cconv_{builder}", parameters, readme, flops, top1
        )
        for (label, suffix, builder), parameters, readme, flops, top1 in zip(
            _SMALL_ABLATIONS[:4],
            (21_978_120, 22_006_696, 22_227_560, 22_210_696),
            ("22.0M", "22.0M", "22.2M", "22.2M"),
            (4.7, 5.0, 5.3, 5.3),
            (82.28, 82.95, 82.98, 82.87),
        )
    ],
    _imagenet(
        "stage-wise [100,100,100,100]", "pacavit-small-clusters-100-100-100-100", "pacavit_small_p2cconv_100",
        22_245_448, "22.3M", 5.6, 83.05, linked="IMNET_224_pacavit_small_p2cconv_100_49.pth", released=False,
        note="The README row links `IMNET_224_pacavit_small_p2cconv_100_49.pth`, the file of the [100,81,64,49] "
        "row. No checkpoint of this model is linked; this card records the reported result only.",
    ),
    _imagenet(
        "block-wise [100,100,100,100]", "pacavit-small-blockwise", "pacavit_small_p2cconv_100_blockwise",
        24_191_944, "24.1M", 6.1, 82.93,
    ),
    # ---------------------------------------------------------------- MS-COCO, Mask R-CNN 1x (multi-scale training)
    _coco("PaCa-Tiny (conv)", "pacavit-tiny", "pacavit_tiny_p2cconv_100_0", 31_974_896, "32.0", 252,
          (43.3, 66.0, 47.5, 39.6, 62.9, 42.4)),
    _coco("PaCa-Small (conv)", "pacavit-small", "pacavit_small_p2cconv_100_0", 41_811_920, "41.8", 296,
          (46.4, 68.7, 50.9, 41.8, 65.5, 45.0)),
    _coco("PaCa-Small (mlp)", "pacavit-small-mlp", "pacavit_small_p2cmlp_100_0", 42_411_484, "42.4", 303,
          (46.6, 69.0, 51.3, 41.9, 65.7, 45.0)),
    _coco(
        "PaCa-Small (teacher)", "pacavit-tiny-teacher", "pacavit_convmixer_tiny_100_0", 32_257_888, "40.9", 292,
        (45.8, 68.0, 50.3, 41.4, 64.9, 44.5), attributable=False,
        note="The README row 'PaCa-Small (teacher)' links this file, whose name says the TINY teacher backbone "
        "(32.26M parameters); the row's 40.9M matches the small-teacher Mask R-CNN (40.85M), of which no file is "
        "linked. This card describes the linked file; the row's numbers are shown but may belong to the small "
        "teacher, so they are not claimed in the model-index. (The original code cannot even build this model: "
        "its tiny downstream class reads `_arch_settings['tiny_eacher']`, a typo.)",
    ),
    _coco("PaCa-Base (conv)", "pacavit-base", "pacavit_base_p2cconv_100_0", 66_606_672, "66.6", 373,
          (48.0, 69.7, 52.1, 42.9, 66.6, 45.6)),
    _coco(
        "PaCa-Base (teacher)", "pacavit-base-teacher", "pacavit_convmixer_base_100_0", 67_354_560, "61.4", 372,
        (48.3, 70.5, 52.6, 43.3, 67.2, 46.6),
        note="The README's #params (61.4M) does not match the architecture (67.35M parameters).",
    ),
    *[
        _coco(label, f"pacavit-small-{suffix}", f"pacavit_small_p2cconv_{builder}", parameters, readme, flops, values,
              note=note)
        for (label, suffix, builder), parameters, readme, flops, values, note in zip(
            _SMALL_ABLATIONS,
            (41_752_336, 41_780_912, 42_001_776, 41_984_912, 42_019_664, 43_966_160),
            ("41.6", "41.8", "42.0", "42.0", "42.0", "44.0"),
            (283, 289, 289, 291, 294, 304),
            (
                (45.5, 68.4, 49.9, 41.1, 64.9, 43.9),
                (46.2, 68.6, 50.6, 41.6, 65.4, 44.3),
                (46.1, 68.7, 50.4, 41.5, 65.3, 44.3),
                (46.1, 68.4, 50.3, 41.7, 65.4, 44.7),
                (46.4, 68.8, 51.0, 41.8, 65.6, 44.6),
                (46.5, 68.7, 51.0, 41.8, 65.6, 45.0),
            ),
            ("The README's #params (41.6M) is slightly off: the architecture has 41.75M.", *[None] * 5),
        )
    ],
    # ---------------------------------------------------------------- ADE20K (512x512, 160k iterations)
    _ade20k("PaCa-Tiny (conv) / UperNet", "pacavit-tiny", "pacavit_tiny_p2cconv_100_0", "upernet", 41_561_516,
            "41.6", 229.9, 44.49),
    _ade20k("PaCa-Small (conv) / UperNet", "pacavit-small", "pacavit_small_p2cconv_100_0", "upernet", 51_398_540,
            "51.4", 242.7, 47.6),
    _ade20k("PaCa-Base (conv) / UperNet", "pacavit-base", "pacavit_base_p2cconv_100_0", "upernet", 77_182_732,
            "77.2", 264.1, 49.67),
    _ade20k("PaCa-Tiny (conv) / PaCa", "pacavit-tiny", "pacavit_tiny_p2cconv_100_0", "paca", 13_326_764,
            "13.3", 34.4, 45.65),
    _ade20k("PaCa-Small (conv) / PaCa", "pacavit-small", "pacavit_small_p2cconv_100_0", "paca", 23_163_788,
            "23.2", 47.2, 48.3),
    _ade20k("PaCa-Small (mlp) / PaCa", "pacavit-small-mlp", "pacavit_small_p2cmlp_100_0", "paca", 23_946_052,
            "24.0", 50.0, 48.2),
    _ade20k("PaCa-Small (teacher) / PaCa", "pacavit-small-teacher", "pacavit_convmixer_small_100_0", "paca",
            22_239_948, "22.2", 46.4, 46.2),
    _ade20k("PaCa-Base (conv) / PaCa", "pacavit-base", "pacavit_base_p2cconv_100_0", "paca", 47_964_940,
            "48.0", 68.5, 50.39),
    _ade20k("PaCa-Base (teacher) / PaCa", "pacavit-base-teacher", "pacavit_convmixer_base_100_0", "paca",
            48_764_428, "48.8", 68.7, 48.4),
    *[
        _ade20k(
            f"{label} / PaCa", f"pacavit-small-{suffix}", f"pacavit_small_p2cconv_{builder}", "paca", parameters,
            readme, flops, miou, linked=f"upernet_pacavit_small_p2cconv_{builder}_512x512_160k_ade20k.pth",
            note=_ADE20K_ABLATION_NOTE.format(linked=f"upernet_pacavit_small_p2cconv_{builder}_512x512_160k_ade20k.pth"),
        )
        for (label, suffix, builder), parameters, readme, flops, miou in zip(
            _SMALL_ABLATIONS,
            (23_163_788, 23_163_788, 23_409_932, 23_409_932, 23_409_932, 25_778_828),
            ("23.2", "23.4", "23.2", "23.7", "23.4", "25.8"),
            (47.2, 47.3, 47.2, 47.3, 47.3, 50.9),
            (47.7, 47.8, 48.1, 47.6, 48.3, 48.0),
        )
    ],
]
# fmt: on


def hub_id(release: dict) -> str:
    """`ivmcl/<preset>` for classifiers, `-mask-rcnn-coco`, `-upernet-ade20k`, `-pacahead-ade20k` for the rest."""
    suffix = {
        "imagenet": "",
        "coco": "-mask-rcnn-coco",
        "ade20k": f"-{'pacahead' if release.get('head') == 'paca' else 'upernet'}-ade20k",
    }[release["section"]]
    return f"{HUB_ORGANISATION}/{release['preset']}{suffix}"


def card_name(release: dict) -> str:
    """File name of the card in model_cards/ (the Hub id's name)."""
    return hub_id(release).split("/", 1)[1] + ".md"


def base_model(release: dict) -> str | None:
    """The released ImageNet classifier the dense model was fine-tuned from (None if that file is not released).

    The original configs initialise each backbone from `IMNET_224_<builder>.pth` of the same builder."""
    if release["section"] == "imagenet":
        return None
    for candidate in RELEASES:
        if candidate["section"] == "imagenet" and candidate["preset"] == release["preset"]:
            return hub_id(candidate) if candidate["released"] else None
    return None


__all__ = ["COCO_METRICS", "HUB_ORGANISATION", "RELEASES", "base_model", "card_name", "hub_id"]
