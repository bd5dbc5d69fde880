"""The detector: backbone → neck (yolov5-style SPP + top-down path) → three-branch head.

Backbone (``backbone.name = nanxi``): a stride-2 stem, then four stages (stride 4, 8, 16, 32), each a stride-2
conv-BN-act followed by ``backbone.depth`` residual bottlenecks (1×1 then 3×3). Stage
channels: width, 2·width, 4·width, 8·width (capped at 1024); the stem has ``width``.
Other names are torchvision trunks (engine.model.backbones); ``backbone.weights`` loads after initialisation.
Neck: SPP on the stride-32 feature, then per level down to ``neck.out_stride``:
1×1 reduce, nearest ×2 upsample, + lateral 1×1 of the backbone feature, 3×3 merge conv.
The level's channels are the backbone's channels at that stride.
Head: map / offset / shape branches, each ``head.depth`` × (3×3 conv [+ BN when
head.norm == "bn"] + act) and a 1×1 output conv. No BatchNorm by default (notes §13).

Outputs (all (B, ·, S/out_stride, S/out_stride)):
* ``map_logits`` raw; ``map`` = range_norm_act(map_logits).
* ``offset`` raw (subpixel targets in [0, 1), centered in [−0.5, 0.5)).
* ``shape``: for ``wh``/``ltrb`` softplus(raw) × ``shape_scale`` with
  shape_scale = 16 / out_stride (TTFNet's 16-px base expressed in cells), positive and
  smooth everywhere; for ``log_wh`` the raw output.
The map's output bias starts where range_norm_act gives 0.1 (the focal-loss prior;
−2.197 for sigmoid, the classic −2.19).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import encoding
from ..config import Config
from .loss import DetectionLoss
from ..run.device import compute_dtype

MAX_CHANNELS = 1024
PRIOR = 0.1
STRIDES = (4, 8, 16, 32)


def make_act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1)
    if name == "mish":
        return nn.Mish()
    if name == "hardswish":
        return nn.Hardswish()
    raise ValueError(f"unknown activation {name!r}")


def range_norm(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The heatmap's range-normalising activation."""
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "hsigmoid":
        return F.hardsigmoid(x)
    if kind == "softskim":
        return (torch.sigmoid(x) - 0.1) * 1.2
    if kind == "heatskim":
        return ((torch.sigmoid(x) - 0.1) * 1.2).clamp(0.0, 1.0)
    raise ValueError(f"unknown range_norm_act {kind!r}")


def prior_bias(kind: str, prior: float = PRIOR) -> float:
    """The logit at which range_norm(·, kind) equals ``prior``."""
    if kind == "hsigmoid":
        return 6.0 * prior - 3.0
    if kind in ("softskim", "heatskim"):
        prior = prior / 1.2 + 0.1
    return math.log(prior / (1.0 - prior))


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, s: int, act: str):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), make_act(act))


class Bottleneck(nn.Module):
    def __init__(self, c: int, act: str):
        super().__init__()
        mid = max(c // 2, 1)
        self.cv1 = ConvBNAct(c, mid, 1, 1, act)
        self.cv2 = ConvBNAct(mid, c, 3, 1, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class Backbone(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        act, w, depth = cfg.principles.act, cfg.backbone.width, cfg.backbone.depth
        self.channels = {s: min(w * 2 ** i, max(MAX_CHANNELS, w)) for i, s in enumerate(STRIDES)}
        self.stem = ConvBNAct(3, w, 3, 2, act)
        stages, cin = [], w
        for s in STRIDES:
            c = self.channels[s]
            stages.append(nn.Sequential(ConvBNAct(cin, c, 3, 2, act), *[Bottleneck(c, act) for _ in range(depth)]))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.stem(x)
        feats = {}
        for s, stage in zip(STRIDES, self.stages):
            x = stage(x)
            feats[s] = x
        return feats


class SPP(nn.Module):
    """yolov5's SPP: 1×1 reduce, parallel stride-1 max-pools, concat, 1×1."""

    def __init__(self, c: int, kernels: tuple[int, ...], act: str):
        super().__init__()
        mid = max(c // 2, 1)
        self.kernels = tuple(kernels)
        self.cv1 = ConvBNAct(c, mid, 1, 1, act)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernels)
        self.cv2 = ConvBNAct(mid * (len(kernels) + 1), c, 1, 1, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(p(x) for p in self.pools)], dim=1))


class TopDown(nn.Module):
    def __init__(self, cin: int, c_lateral: int, act: str):
        super().__init__()
        self.reduce = ConvBNAct(cin, c_lateral, 1, 1, act)
        self.lateral = ConvBNAct(c_lateral, c_lateral, 1, 1, act)
        self.merge = ConvBNAct(c_lateral, c_lateral, 3, 1, act)

    def forward(self, x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=lateral.shape[-2:], mode="nearest")
        return self.merge(x + self.lateral(lateral))


class Neck(nn.Module):
    def __init__(self, cfg: Config, channels: dict[int, int]):
        super().__init__()
        act = cfg.principles.act
        self.spp = SPP(channels[32], cfg.neck.spp_kernels, act)
        self.levels = [s for s in (16, 8, 4) if s >= cfg.neck.out_stride]
        ups, cin = [], channels[32]
        for s in self.levels:
            ups.append(TopDown(cin, channels[s], act))
            cin = channels[s]
        self.ups = nn.ModuleList(ups)
        self.out_channels = cin

    def forward(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        x = self.spp(feats[32])
        for s, up in zip(self.levels, self.ups):
            x = up(x, feats[s])
        return x


class Branch(nn.Sequential):
    def __init__(self, cin: int, cout: int, cfg: Config):
        layers: list[nn.Module] = []
        c = cin
        bn = cfg.head.norm == "bn"
        for _ in range(cfg.head.depth):
            layers.append(nn.Conv2d(c, cfg.head.channels, 3, 1, 1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(cfg.head.channels))
            layers.append(make_act(cfg.principles.act))
            c = cfg.head.channels
        layers.append(nn.Conv2d(c, cout, 1))
        super().__init__(*layers)

    @property
    def out_conv(self) -> nn.Conv2d:
        return self[-1]


def init_weights(module: nn.Module, kind: str) -> None:
    """Initialise every conv weight (biases to zero); torch_default leaves them as PyTorch made them."""
    if kind == "torch_default":
        return
    for m in module.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if kind == "trunc_normal":
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
        elif kind == "kaiming":
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif kind == "xavier":
            nn.init.xavier_uniform_(m.weight)
        else:
            raise ValueError(f"unknown weights_init {kind!r}")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_backbone(cfg: Config) -> nn.Module:
    if cfg.backbone.name == "nanxi":
        return Backbone(cfg)
    from .backbones import TorchvisionBackbone

    return TorchvisionBackbone(cfg.backbone.name)


class Detector(nn.Module):
    def __init__(self, cfg: Config, num_classes: int, load_weights: bool = True):
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        if cfg.neck.out_stride == "auto":  # engine.data.profile chooses it from the train split first
            raise ValueError("neck.out_stride = auto is chosen from the train split when a run starts; resolve it "
                             "with engine.data.profile.resolve_for_training before building the model")
        self.cfg = cfg
        self.num_classes = num_classes
        self.stride = cfg.neck.out_stride
        self.shape_channels = encoding.shape_channels(cfg.encode.shape)
        self.shape_scale = 16.0 / self.stride
        self.input_bn = nn.BatchNorm2d(3) if cfg.backbone.input_channels_bn else nn.Identity()
        self.backbone = build_backbone(cfg)
        self.neck = Neck(cfg, self.backbone.channels)
        c = self.neck.out_channels
        self.head_map = Branch(c, num_classes, cfg)
        self.head_offset = Branch(c, 2, cfg)
        self.quality = cfg.head.shape_quality  # one more channel of the shape branch: its box's predicted IoU
        self.dfl = cfg.encode.shape == "ltrb_dfl"  # each side a distribution over bins, reduced to its expectation
        self.shape_raw = self.shape_channels
        if self.dfl:
            bins = torch.arange(encoding.dfl_bins(cfg.preprocess.input_size), dtype=torch.float32)
            self.register_buffer("dfl_cells", bins * encoding.DFL_BIN_PX / self.stride, persistent=False)
            self.shape_raw = 4 * len(bins)
        self.head_shape = Branch(c, self.shape_raw + int(self.quality), cfg)
        self.criterion = DetectionLoss(cfg)
        init_weights(self, cfg.principles.weights_init)
        nn.init.constant_(self.head_map.out_conv.bias, prior_bias(cfg.head.range_norm_act))
        self.weights_source = ""
        if load_weights and cfg.backbone.weights:  # a resume skips it: the checkpoint overwrites them anyway
            from .backbones import load_weights as load

            tv = cfg.backbone.name != "nanxi"
            self.weights_source = load(self.backbone.net if tv else self.backbone, cfg.backbone.weights,
                                       cfg.backbone.name, "backbone.net." if tv else "backbone.")
        if load_weights and cfg.train.init_from:  # every layer: over backbone.weights
            from .warm_start import load_detector

            self.weights_source = load_detector(self, cfg.train.init_from)

    def reconfigure(self, cfg: Config) -> None:
        """A live edit: the loss reads the new config from the next step (the layers keep their weights)."""
        self.cfg = cfg
        self.criterion.cfg = cfg

    def forward(self, images: torch.Tensor, targets: dict | None = None) -> dict[str, torch.Tensor]:
        # a float32 input computes in train.precision; a model moved to another dtype (float64) stays in it
        dtype = compute_dtype(self.cfg.train.precision, images.device.type) if images.dtype == torch.float32 else None
        with torch.autocast(images.device.type, dtype or torch.float32, enabled=dtype is not None):
            f = self.neck(self.backbone(self.input_bn(images)))
            logits, shape, offset = self.head_map(f), self.head_shape(f), self.head_offset(f)
        if dtype is not None:  # the loss and the decode in float32
            logits, shape, offset = logits.float(), shape.float(), offset.float()
        quality, extra = None, {}
        if self.quality:
            shape, quality = shape[:, :self.shape_raw], shape[:, self.shape_raw:]
        if self.dfl:
            b, _, h, w = shape.shape
            extra["shape_logits"] = shape.reshape(b, 4, -1, h, w)
            shape = (extra["shape_logits"].softmax(2) * self.dfl_cells.view(1, 1, -1, 1, 1)).sum(2)
        elif self.cfg.encode.shape != "log_wh":
            shape = F.softplus(shape) * self.shape_scale
        outputs = {"map": range_norm(logits, self.cfg.head.range_norm_act), "map_logits": logits,
                   "offset": offset, "shape": shape, **extra}
        if quality is not None:
            outputs |= {"quality": torch.sigmoid(quality), "quality_logits": quality}
        if targets is not None:
            return self.losses(outputs, targets)
        return outputs

    def losses(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        return self.criterion(outputs, targets)


def build_model(cfg: Config, num_classes: int, load_weights: bool = True) -> Detector:
    return Detector(cfg, num_classes, load_weights)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
