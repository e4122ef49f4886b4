"""`python -m tuner.predict MODEL_URI IMAGE... [--top-k 3] [--json]`: classify image files with a registered model.

    python -m tuner.predict models:/resnet_rsb-digits/1 a.png b.jpg --mlflow-uri http://127.0.0.1:5000

MODEL_URI is any MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/model, a local model
folder); the tracking URI comes from --mlflow-uri, else $MLFLOW_TRACKING_URI. Each image is read with PIL as RGB,
scaled to [0, 1] and resized to the size the model takes (recorded with the registered model: its metadata's
`input_size`, else its signature's shape) with the resize the model itself uses; the model normalises and
resizes further to what its net saw in training. Prints the top-k classes with
their probabilities per image, or one JSON document with --json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from trainables.errors import UserError
from tuner import cli


def resize_to(images, size: int):
    """(B, 3, H, W) float images to (B, 3, size, size) exactly as trainables.classify.ImageClassifier resizes."""
    from torch import nn

    if not size or images.shape[-1] == size and images.shape[-2] == size:
        return images
    return nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                     antialias=size < max(images.shape[-2:]), align_corners=False)


def read_image(path: str | Path):
    """An image file as a float tensor (3, H, W) in [0, 1], converted exactly as a folder's cache decodes it
    (trainables.images: high bit depth scaled, alpha composited, palette and CMYK converted, EXIF orientation);
    a missing or unreadable file is a UserError."""
    import torch

    from trainables.images import read_rgb

    file = Path(path)
    if not file.exists():
        raise UserError(f"image {file} does not exist")
    if not file.is_file():
        raise UserError(f"image {file} is not a file")
    return torch.from_numpy(read_rgb(file).copy()).permute(2, 0, 1).float() / 255.0


def load_model(model_uri: str, tracking_uri: str | None = None):
    """The registered model (mlflow.pytorch) on CPU, and its MLflow model info (signature, metadata).

    MLflow 3 saves PyTorch models as "pt2" (torch.export) by default: what loads is a graph module, exported in
    eval mode, for the input shape of the logged example (the signature's), without the model's attributes.
    An unknown URI is a UserError.
    """
    import mlflow

    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(key, value)  # an unreachable server: one line in seconds, not minutes of retries
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        from mlflow.models import get_model_info

        info = get_model_info(model_uri)
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - MlflowException (unknown name/version/run), OSError, network errors
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model '{model_uri}' from MLflow at {mlflow.get_tracking_uri()}: {detail}") \
            from None
    try:
        model.eval()  # a pickled nn.Module; an exported graph module is eval already and refuses the call
    except NotImplementedError:
        pass
    return model, info


def input_size_of(model, info=None) -> int:
    """The side in pixels the model takes: the `input_size` its sweep recorded in the MLflow metadata, else the
    spatial size of its signature's input, else its own `input_size` / `image_size` attributes."""
    metadata = getattr(info, "metadata", None) or {}
    if metadata.get("input_size"):
        return int(metadata["input_size"])
    try:
        shape = info.signature.inputs.inputs[0].shape
        if len(shape) == 4 and shape[-1] > 0 and shape[-1] == shape[-2]:
            return int(shape[-1])
    except (AttributeError, IndexError, TypeError):  # no signature, or not a tensor one: try the next source
        pass
    for attribute in ("input_size", "image_size"):
        if getattr(model, attribute, None):
            return int(getattr(model, attribute))
    raise UserError("the model does not say which image size it takes; pass --size PIXELS")


def classes_of(model, info=None) -> list[str]:
    """Class names: from the MLflow metadata, else the model's `classes`; empty when neither has them."""
    metadata = getattr(info, "metadata", None) or {}
    return [str(c) for c in (metadata.get("classes") or getattr(model, "classes", None) or [])]


def outputs_of(info=None) -> str:
    """What the model returns: "probabilities" (models registered by a sweep say so) or "logits"."""
    return (getattr(info, "metadata", None) or {}).get("outputs", "logits")


def predict(model, images: list, size: int, top_k: int = 3, classes: list[str] | None = None,
            batch_size: int = 64, outputs: str = "logits") -> list[list[dict[str, Any]]]:
    """Top-k (class, index, probability) per image, best first; classes without names are their index.
    `outputs`: what the model returns ("logits" are turned into probabilities here)."""
    import torch

    classes = list(classes if classes is not None else getattr(model, "classes", None) or [])
    results = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([resize_to(image[None], size)[0] for image in images[start:start + batch_size]])
            out = model(batch).float()
            probs = out if outputs == "probabilities" else torch.softmax(out, dim=1)
            k = min(top_k, probs.shape[1])
            top = probs.topk(k, dim=1)
            for values, indices in zip(top.values.tolist(), top.indices.tolist()):
                results.append([{"class": classes[i] if i < len(classes) else str(i), "index": i, "probability": p}
                                for p, i in zip(values, indices)])
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.predict", description="Classify image files with a model "
                                "registered in MLflow by a sweep (or any MLflow PyTorch model URI).")
    p.add_argument("model_uri", metavar="MODEL_URI", help="models:/NAME/VERSION, models:/NAME@ALIAS, "
                                                          "runs:/RUN_ID/model, or a local model folder")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, ...: anything PIL reads)")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--size", type=int, help="resize images to this side in pixels (default: what the model says)")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.top_k < 1:
        raise UserError("--top-k must be a positive integer")
    if args.size is not None and args.size < 1:
        raise UserError("--size must be a positive integer")
    images = [read_image(path) for path in args.images]  # bad files fail before the (slower) model load
    model, info = load_model(args.model_uri, args.mlflow_uri)
    size = args.size or input_size_of(model, info)
    try:
        results = predict(model, images, size, args.top_k, classes_of(model, info), outputs=outputs_of(info))
    except (RuntimeError, AssertionError, ValueError) as exc:  # an exported graph fixed to another size
        raise UserError(f"the model rejected {size}x{size} images: {str(exc).strip().splitlines()[0][:200]}") \
            from None
    if args.json:
        print(json.dumps({"model_uri": args.model_uri, "input_size": size,
                          "predictions": [{"image": path, "top": top} for path, top in zip(args.images, results)]},
                         indent=2))
    else:
        width = max(len(path) for path in args.images)
        for path, top in zip(args.images, results):
            print(f"{path:<{width}}  " + "   ".join(f"{t['class']} {100 * t['probability']:5.1f}%" for t in top))
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.exit_with(main)
