"""Out of the tool: predictions on val or image files (predict), boxes drawn on images (draw), ONNX and
TorchScript export checked against PyTorch (export)."""
