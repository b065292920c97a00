"""The input contract: how an image becomes the model's input, recorded with the weights.

An image is decoded to 8-bit RGB as displayed (pipeline/images.py: EXIF orientation applied,
transparency composited on white, 16-bit scaled), resized so that its shorter side is
`min_size` unless its longer side would pass `max_size` (aspect kept), scaled to [0, 1] and
normalised with `image_mean` / `image_std`, then zero-padded bottom/right onto a canvas chosen
from its own resized size, with DETR's padding mask (True on padding).

The canvas rule: the shorter side padded to `min_size`, the longer to the first of a few
levels (a 4:3 photo's length, then `max_size`), each rounded up to `stride`. An image gets the
same canvas alone or in any batch, so its detections do not depend on its neighbours, and the
few canvases (four at 800/1333: 800x1088 and 800x1344, either way round) fill model batches.

Training validates with it, detection runs it, export metadata carries it, and every checkpoint
the project writes records it (model/checkpoint.py), so each job defaults to the contract the
weights were trained for. Sizes only, no pixels and no torch: the read tasks of bulk detection
compute canvases from image headers with it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputContract:
    min_size: int = 800  # shorter side after resizing
    max_size: int = 1333  # longer side cap after resizing
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    stride: int = 32  # canvases are multiples of it (the backbones' largest stride)
    canvas_aspects: tuple[float, ...] = field(default=(4 / 3,))  # long-side levels besides max_size
    # (height, width): every image resized to exactly this, aspect not kept and no padding (RT-DETR,
    # D-FINE and their kin: model/families.py); None: the shorter-side rule above, on canvases.
    fixed_size: tuple[int, int] | None = None
    # How pixels are resized: antialiased bilinear on the 8-bit image (DETR's, RT-DETR's processors),
    # or False: plain bilinear on [0, 1] floats (RF-DETR's processor, as its authors' code).
    antialias: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"the input contract needs 1 <= min_size <= max_size, got {self.min_size} / "
                             f"{self.max_size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean and image_std need 3 values (std > 0), got {self.image_mean} / "
                             f"{self.image_std}")
        if self.fixed_size is not None:
            object.__setattr__(self, "fixed_size", tuple(int(v) for v in self.fixed_size))
            if len(self.fixed_size) != 2 or min(self.fixed_size) < 1:
                raise ValueError(f"fixed_size needs (height, width) >= 1, got {self.fixed_size}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing (torchvision's rounding), never below 1 px."""
        if self.fixed_size is not None:
            return self.fixed_size
        short, long = sorted((height, width))
        new_short, new_long = self.min_size, int(self.min_size * long / short)
        if new_long > self.max_size:
            new_short, new_long = max(1, int(self.max_size * new_short / new_long)), self.max_size
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def canvas_size(self, height: int, width: int) -> tuple[int, int]:
        """The canvas (height, width) of an image of this *resized* size: a function of it alone."""
        if self.fixed_size is not None:  # every image fills it: one canvas, full batches
            return self.fixed_size
        levels = sorted({self._round_up(min(self.max_size, math.ceil(self.min_size * a))) for a in self.canvas_aspects}
                        | {self._round_up(max(self.max_size, self.min_size))})
        short, long = sorted((height, width))
        canvas_short = max(self._round_up(self.min_size), self._round_up(short))
        canvas_long = next((level for level in levels if level >= long), self._round_up(long))
        canvas_long = max(canvas_long, canvas_short)
        return (canvas_short, canvas_long) if width >= height else (canvas_long, canvas_short)

    def canvas_of(self, height: int, width: int) -> tuple[int, int]:
        """The canvas of an image of this *original* (displayed) size."""
        return self.canvas_size(*self.resized_size(height, width))

    def _round_up(self, value: int) -> int:
        return math.ceil(value / self.stride) * self.stride

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        fixed = d.pop("fixed_size")  # absent when None (antialias: when True): contracts recorded
        antialias = d.pop("antialias")  # before these fields were read the same
        return {**d, "image_mean": list(d["image_mean"]), "image_std": list(d["image_std"]),
                "canvas_aspects": list(d["canvas_aspects"]), **({"fixed_size": list(fixed)} if fixed else {}),
                **({} if antialias else {"antialias": False})}

    def resize(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A displayed uint8 3xHxW image resized to `size` as [0, 1] floats, by the contract's rule."""
        import torchvision.transforms.v2.functional as TF

        if self.antialias:
            return TF.resize(image, list(size), antialias=True).float() / 255
        return TF.resize(image.float() / 255, list(size), antialias=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputContract:
        known = {"min_size", "max_size", "image_mean", "image_std", "stride", "canvas_aspects", "fixed_size",
                 "antialias"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown input contract fields: {unknown}")
        d = dict(d)
        if d.get("fixed_size") is None:
            d.pop("fixed_size", None)
        for key in ("image_mean", "image_std", "canvas_aspects"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)

    def describe(self) -> str:
        if self.fixed_size is not None:
            return (f"resized to {self.fixed_size[0]}x{self.fixed_size[1]} (aspect not kept, no padding), mean "
                    f"{list(self.image_mean)}, std {list(self.image_std)}")
        return (f"shorter side {self.min_size}, longer at most {self.max_size}, mean {list(self.image_mean)}, "
                f"std {list(self.image_std)}, canvases of {self.stride}")


# The paper's: what the reference release and Hugging Face's DETR checkpoints were trained with,
# and what a checkpoint that records no contract (written before contracts were) gets.
PAPER_CONTRACT = InputContract()


def resolve_contract(recorded: InputContract | None, source: str, min_size: int | None = None,
                     max_size: int | None = None) -> tuple[InputContract, list[str]]:
    """The contract a job runs a checkpoint with: the one it records (else the paper's), with
    the sizes a user gave instead; and the lines that say what differs from the recorded one."""
    said = []
    contract = recorded
    if contract is None:
        contract = PAPER_CONTRACT
        said.append(f"{source} records no input contract (a reference or Hugging Face checkpoint, or ours from "
                    f"before contracts): using the paper's, {contract.describe()}")
    given = {"min_size": min_size, "max_size": max_size}
    changed = {k: v for k, v in given.items() if v is not None and v != getattr(contract, k)}
    if changed:
        said.append("overriding the checkpoint's input contract: "
                    + ", ".join(f"--{k.replace('_', '-')} {v} (its own: {getattr(contract, k)})"
                                for k, v in changed.items())
                    + "; detections can differ from what its training validated")
        contract = replace(contract, min_size=changed.get("min_size", contract.min_size),
                           max_size=changed.get("max_size", contract.max_size))
    return contract, said
