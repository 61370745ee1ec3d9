"""finsent streaming pipeline."""
