"""Stage 2: AffectNet expression fine-tuning of the MAE encoder."""
