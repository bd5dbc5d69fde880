"""The detector: backbones, neck and the map / offset / shape head (detector), the box encoding, training
targets, the per-branch loss (a dict of losses) and decode to boxes."""
