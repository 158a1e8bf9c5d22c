"""Detection: model bundle, predictor, stitcher and the detect pipeline."""
