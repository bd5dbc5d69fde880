"""Data: COCO datasets and loaders with torchvision.transforms.v2 augmentation (dataset), where the data lives
(datapaths), the embedded synthetic demo sets, the min-IoU crop."""
