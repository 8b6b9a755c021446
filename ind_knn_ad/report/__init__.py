"""What a run shows: evaluation, the results file, heatmaps, the contact sheet, console tables."""
