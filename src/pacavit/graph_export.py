"""Export PaCa-ViT classifiers and backbones as graphs: `torch.export` (dynamic batch, height and width) and ONNX.

    python -m pacavit.graph_export MODEL_DIR model.pt2            # torch.export program (torch.export.load)
    python -m pacavit.graph_export MODEL_DIR model.onnx --check   # ONNX (needs the `onnx` extra), checked
                                                                  # against eager with onnxruntime

MODEL_DIR is any pacavit folder (converted, trained, exported); the graph's outputs are plain tensors:
`logits` for a classifier, `feature_map_<i>` (one per `out_features`) for a backbone, `last_hidden_state` for
the bare model. Height and width are dynamic from 33 to 4096 pixels (any value, not only multiples of 32; at 32
or less the last stage is a 1x1 grid, which torch.export specialises: export such sizes with `--static`).
The ONNX file is made from the same `torch.export` program (torch's dynamo-based ONNX exporter, which needs
`onnxscript`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

import pacavit  # the public model classes by the name config.json gives them

MIN_SIZE, MAX_SIZE = 33, 4096


class GraphOutputs(nn.Module):
    """The model with tensor outputs only (graphs and ONNX have no ModelOutput dataclasses)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.kind = type(model).__name__
        if self.kind == "PaCaViTForImageClassification":
            self.output_names = ["logits"]
        elif self.kind == "PaCaViTBackbone":
            self.output_names = [f"feature_map_{i}" for i in range(len(model.out_features))]
        elif self.kind == "PaCaViTModel":
            self.output_names = ["last_hidden_state"]
        else:
            raise ValueError(
                f"Graph export supports PaCaViTForImageClassification, PaCaViTBackbone and PaCaViTModel, not "
                f"{self.kind}."
            )

    def forward(self, pixel_values: torch.Tensor):
        outputs = self.model(pixel_values=pixel_values)
        if self.kind == "PaCaViTForImageClassification":
            return outputs.logits
        if self.kind == "PaCaViTBackbone":
            return tuple(outputs.feature_maps)
        return outputs.last_hidden_state


def example_input(model: nn.Module, height: int = 96, width: int = 128, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.config.num_channels, height, width)


def export_program(model: nn.Module, example: torch.Tensor | None = None, dynamic: bool = True):
    """`torch.export.export` of the model's tensor outputs; batch, height and width dynamic unless `dynamic=False`."""
    wrapper = GraphOutputs(model)
    example = example_input(model) if example is None else example
    shapes = {"pixel_values": dynamic_image_shapes()} if dynamic else None
    with torch.no_grad():
        return torch.export.export(wrapper, (example,), dynamic_shapes=shapes)


def dynamic_image_shapes(min_size: int = MIN_SIZE, max_size: int = MAX_SIZE) -> dict:
    """The dynamic dimensions of a `(batch, channels, height, width)` input, as `export_program` exports them (for
    exporting another model, e.g. a timm one, the same way)."""
    return {
        0: torch.export.Dim("batch", min=1, max=1024),
        2: torch.export.Dim("height", min=min_size, max=max_size),
        3: torch.export.Dim("width", min=min_size, max=max_size),
    }


def export_onnx(
    model: nn.Module,
    path: str | Path,
    program=None,
    example: torch.Tensor | None = None,
    output_names: list[str] | None = None,
) -> Path:
    """Write an ONNX file (from `program`, or a new dynamic `export_program`); returns the path. `output_names`
    default to the PaCa-ViT model's (`GraphOutputs`); give them with the `program` of another model."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as error:
        raise ImportError('ONNX export needs onnx and onnxscript: `pip install -e ".[onnx]"`.') from error
    program = export_program(model, example) if program is None else program
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        input_names=["pixel_values"],
        output_names=GraphOutputs(model).output_names if output_names is None else output_names,
        optimize=False,  # the graph runs as is in onnxruntime; the optimiser pass only adds export time
        verbose=False,
    )
    path = Path(path)
    onnx_program.save(str(path))
    return path


def eager_outputs(model: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = GraphOutputs(model)(pixel_values)
    return list(out) if isinstance(out, tuple) else [out]


def program_outputs(program, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Run a `torch.export` program (as loaded with `torch.export.load`)."""
    with torch.no_grad():
        out = program.module()(pixel_values)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def onnx_outputs(path: str | Path, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Run the ONNX file with onnxruntime on CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in session.run(None, {"pixel_values": pixel_values.numpy()})]


def max_abs_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
        raise AssertionError(
            f"output shapes differ: {[tuple(g.shape) for g in got]} vs {[tuple(e.shape) for e in expected]}"
        )
    return max((g - e).abs().max().item() for g, e in zip(got, expected))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("output", help="*.pt2 (torch.export) or *.onnx")
    parser.add_argument("--backbone", action="store_true", help="export the folder's weights as PaCaViTBackbone")
    parser.add_argument("--static", action="store_true", help="fix batch/height/width to the example's")
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--check", action="store_true", help="compare with eager at two other input sizes")
    args = parser.parse_args(argv)

    config = AutoConfig.from_pretrained(args.model_dir)
    if args.backbone:
        model_class = pacavit.PaCaViTBackbone
        if not config.out_features or config.out_features == [config.stage_names[-1]]:
            config.out_features = config.stage_names[1:]
    else:
        model_class = getattr(pacavit, (config.architectures or ["PaCaViTModel"])[0])
    model = model_class.from_pretrained(args.model_dir, config=config).eval()
    # a batch of 2 to trace with: an example batch of 1 would be specialised (torch.export treats size 1 as static)
    example = example_input(model, args.height, args.width, batch=1 if args.static else 2)
    program = export_program(model, example, dynamic=not args.static)
    output = Path(args.output)
    if output.suffix == ".onnx":
        export_onnx(model, output, program)
    else:
        torch.export.save(program, str(output))
    print(f"wrote {output} ({model_class.__name__}, outputs {GraphOutputs(model).output_names})")
    if args.check:
        sizes = [(args.height, args.width)] if args.static else [(args.height, args.width), (97, 131)]
        for height, width in sizes:
            x = example_input(model, height, width, batch=1)
            got = (
                onnx_outputs(output, x)
                if output.suffix == ".onnx"
                else program_outputs(torch.export.load(str(output)), x)
            )
            print(f"{height}x{width}: max abs error vs eager {max_abs_error(got, eager_outputs(model, x)):.2e}")


if __name__ == "__main__":
    main()
