"""Frames in, results out: sources, the pipeline, the classify / detect tasks, sinks, the meter."""
