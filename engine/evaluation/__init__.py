"""Evaluation: COCO AP with pycocotools (evaluate), the TIDE-style error breakdown (errors), and evaluating a
saved run or a live run's online weights (evaluate_run)."""
