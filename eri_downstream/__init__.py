"""Stage 3: multimodal emotion reaction intensity (Hume-Reaction) on the frozen face encoder."""
