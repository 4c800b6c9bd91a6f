"""🤗 `Trainer` fine-tunes and evaluates PaCa-ViT models from a 🤗 `datasets.Dataset` with the saved image processor.

What docs/training.md ("With 🤗 Trainer") shows: the model and its image processor saved as the scripts write a
folder (`save_pretrained`), loaded back with the Auto classes, a `Dataset` of PIL images (and masks), a collate
function that runs the image processor (as transformers' image-classification guide does), and
`remove_unused_columns=False` so that the `image` column reaches it. Tiny widths, 32x32 images from scikit-learn's
digits and 6 steps: a few seconds per model on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image
from sklearn.datasets import load_digits
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    Trainer,
    TrainingArguments,
)

from pacavit import PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTSegmentationConfig
from pacavit.metrics.segmentation import MeanIoU
from pacavit.preprocessing import classification_image_processor, segmentation_image_processor

from helpers import TINY, tiny_config

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # Trainer creates accelerate's singletons


def digit_images(count: int, size: int = 32):
    """`count` scikit-learn digits (8x8, values 0-16) as `size`x`size` grayscale PIL images, and their labels."""
    digits = load_digits()
    images = [
        Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        for i in range(count)
    ]
    return images, [int(t) for t in digits.target[:count]]


def training_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,  # keep the `image` (and `mask`) columns for the collate function
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=2e-3,
        num_train_epochs=3,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        seed=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def parameters_changed(before: dict, model) -> bool:
    return any(not torch.equal(before[name], p.detach().cpu()) for name, p in model.named_parameters())


def test_trainer_fine_tunes_and_evaluates_the_classifier(tmp_path):
    # a model folder as the scripts write it: weights, config and the image processor
    folder = tmp_path / "pacavit-digits"
    PaCaViTForImageClassification(tiny_config(num_labels=10, image_size=32, depths=[1, 1, 1, 1])).save_pretrained(
        folder
    )
    classification_image_processor(image_size=32, crop_pct=1.0).save_pretrained(folder)

    model = AutoModelForImageClassification.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    images, labels = digit_images(24)
    train_ds = Dataset.from_dict({"image": images[:16], "label": labels[:16]})
    eval_ds = Dataset.from_dict({"image": images[16:], "label": labels[16:]})

    def collate_fn(examples):
        batch = image_processor([e["image"] for e in examples], return_tensors="pt")  # grayscale -> RGB too
        batch["labels"] = torch.tensor([e["label"] for e in examples])
        return batch

    def compute_metrics(eval_pred):
        return {"accuracy": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args(tmp_path / "out"),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
    )
    before = {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
    train_eval_before = trainer.evaluate(train_ds)["eval_loss"]
    result = trainer.train()
    metrics = trainer.evaluate()

    assert result.global_step == 6  # 16 images, batch 8, 3 epochs
    assert parameters_changed(before, model)
    assert trainer.evaluate(train_ds)["eval_loss"] < train_eval_before  # it learned the data it was trained on
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["epoch"] == 3.0


def test_trainer_fine_tunes_and_evaluates_semantic_segmentation(tmp_path):
    config = PaCaViTSegmentationConfig(
        **dict(TINY, depths=[1, 1, 1, 1]),
        num_clusters=[8, 8, 8, 0],
        decode_head_type="paca",
        decode_head_hidden_size=16,
        id2label={0: "background", 1: "digit"},
    )
    folder = tmp_path / "pacavit-seg"
    PaCaViTForSemanticSegmentation(config).save_pretrained(folder)
    segmentation_image_processor(crop_size=32).save_pretrained(folder)

    model = AutoModelForSemanticSegmentation.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    images, _ = digit_images(12)
    masks = [Image.fromarray((np.asarray(image) > 96).astype(np.uint8)) for image in images]  # the digit's pixels
    train_ds = Dataset.from_dict({"image": images[:8], "mask": masks[:8]})
    eval_ds = Dataset.from_dict({"image": images[8:], "mask": masks[8:]})

    def collate_fn(examples):
        return image_processor(
            [e["image"] for e in examples], segmentation_maps=[e["mask"] for e in examples], return_tensors="pt"
        )

    def preprocess_logits_for_metrics(logits, labels):
        logits = logits[0] if isinstance(logits, tuple) else logits  # the other outputs are the losses, clusters
        upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return upsampled.argmax(dim=1)

    def compute_metrics(eval_pred):
        metric = MeanIoU(num_labels=len(model.config.id2label), id2label=model.config.id2label)
        metric.update(torch.as_tensor(eval_pred.predictions), torch.as_tensor(eval_pred.label_ids))
        return {"mean_iou": metric.compute()["mean_iou"]}

    trainer = Trainer(
        model=model,
        args=training_args(tmp_path / "out", per_device_train_batch_size=4),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    before = {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
    train_eval_before = trainer.evaluate(train_ds)["eval_loss"]
    trainer.train()
    metrics = trainer.evaluate()

    assert parameters_changed(before, model)
    assert trainer.evaluate(train_ds)["eval_loss"] < train_eval_before
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_mean_iou"] <= 1.0
